"""Stop each beam search once its n-best can no longer change.

ESPnet's search runs until its end detection fires (ended hypotheses at each of the last three lengths, all far
below the best: at least three steps after the best ends, and never when the running hypotheses stop ending)
or until the maximum length, which follows the encoder's length. Whisper without 30 s padding decodes to that
maximum on every utterance: 126 steps for a 12-token transcript of 2.5 s.

When no step can raise a hypothesis' score (`runner.engines.monotone_scores`: log probabilities at weights of
at least 0, no length bonus, no length normalization), a running hypothesis ends no better than it stands. So
once the `nbest`-th best ended hypothesis scores at least the best running one, the n-best is final: this
plugin stops there. The n-best, its scores and the translations are ESPnet's; the steps counted are fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.engines import SearchEngine, monotone_scores
from runner.errors import RunnerError
from runner.model import ModelBundle
from runner.plugin import Effects, Plugin


@dataclass
class SettledStopConfig:
    pass


class SettledStop(Plugin):
    name = "settled-stop"
    description = "Stop each beam search once its n-best can no longer change (same n-best, fewer steps)"
    Config = SettledStopConfig
    effects = Effects(search=True)

    def apply(self, bundle: ModelBundle) -> None:
        engines = [search for search in bundle.searches if isinstance(search, SearchEngine)]
        for engine in engines:
            reason = monotone_scores(engine.espnet)
            if reason is not None:
                raise RunnerError(f"plugin 'settled-stop': the {engine.stage} cannot stop early exactly: {reason}")
        for engine in engines:
            engine.settled_nbest = bundle.options.nbest
        self.details.update(nbest=bundle.options.nbest, searches=len(engines))
