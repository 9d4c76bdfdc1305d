"""The lean beam-search engine in place of ESPnet's `BatchBeamSearch` (see `runner.lean`).

Both searches of a multi-decoder model (the ASR search with joint CTC, the ST search with
speech attention), or a plain model's one search, run as `runner.lean.LeanBeamSearch`: ESPnet's
search step for step, with the beam in tensors and keys/values cached. A search the engine
cannot reproduce (an LM or n-gram scorer, a non-Transformer decoder, SDPA attention) keeps
ESPnet's, and `details` says which search runs which engine and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.errors import RunnerError
from runner.lean import LeanBeamSearch
from runner.model import ModelBundle
from runner.plugin import Effects, Plugin


@dataclass
class LeanConfig:
    pass


class Lean(Plugin):
    name = "lean"
    description = "Run the beam searches on the lean engine: ESPnet's search with the beam held in tensors"
    Config = LeanConfig
    effects = Effects(search=True)
    # Applied after number formats (it calls whatever the decoders' modules have become) and
    # before plugins that hook the searches the bundle then hands out.
    after = ("number-format",)
    before = ("search-threads",)

    def apply(self, bundle: ModelBundle) -> None:
        speech2text, engines = bundle.speech2text, {}
        attributes = {"st_search": "beam_search"}
        if bundle.is_multidecoder:
            attributes["asr_search"] = "asr_beam_search"
        for stage, attribute in attributes.items():
            search = getattr(speech2text, attribute)
            if search is None or isinstance(search, LeanBeamSearch):
                continue
            try:
                setattr(speech2text, attribute, LeanBeamSearch(search))
                engines[stage] = "lean"
            except RunnerError as reason:
                engines[stage] = f"espnet ({reason})"
        self.details.update(engines=engines)
