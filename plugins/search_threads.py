"""Beam searches on fewer intra-op threads than the rest of the model.

A search step multiplies `beam` rows (4-10) by the decoder's weights: too little work to split
across cores, so every extra thread adds synchronisation to each of hundreds of small ops. The
encoder, one large batch of frames, still gains from every core. This plugin sets the thread
count to `threads` while each beam search runs and restores the runner's count after it; the
report still states the runner's thread count, with this plugin and its setting beside it. The
engines (`runner.engines.SearchEngine.threads`) do the switching.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.engines import SearchEngine
from runner.errors import RunnerError
from runner.model import ModelBundle
from runner.plugin import Effects, Plugin


@dataclass
class SearchThreadsConfig:
    threads: int = 1


class SearchThreads(Plugin):
    name = "search-threads"
    description = "Run the ASR and ST beam searches on `threads` intra-op threads (the encoder keeps the runner's)"
    Config = SearchThreadsConfig
    effects = Effects(search=True)

    def apply(self, bundle: ModelBundle) -> None:
        if self.config.threads < 1:
            raise RunnerError(f"search-threads: threads must be at least 1, got {self.config.threads}")
        engines = [search for search in bundle.searches if isinstance(search, SearchEngine)]
        for engine in engines:  # each engine searches on these threads and restores the caller's after
            engine.threads = self.config.threads
        self.details.update(search_threads=self.config.threads, searches=len(engines))
