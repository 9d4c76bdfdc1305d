"""The lean beam search: ESPnet's `BatchBeamSearch`, step for step, with the beam held in tensors.

`LeanBeamSearch` takes the place of an ESPnet `BatchBeamSearch` inside `Speech2Text` and takes
its settings (beam, weights, sos/eos, pre-beam, return_hs, normalize_length) from it. It keeps
ESPnet's order of operations: full scores weighted and summed in the scorers' order, pre-beam
top-k on them, CTC prefix scores for the pre-beam candidates, the previous score added, one
top-k over (hypotheses x vocabulary), <eos> added at the last step, ended hypotheses collected
from step `minlen` on, ESPnet's end detection, n-best sorted by score (optionally per length),
and the retry with a smaller minlenratio when nothing ended. What changes is the work per
step: one decoder call for the beam with cached keys/values (`DecoderStep`), CTC states as
one tensor (`CtcPrefixState`), no per-hypothesis Python objects until a hypothesis ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.errors import RunnerError
from runner.lean.ctc import CtcPrefixState
from runner.lean.decoder import DecoderStep, check_decoder

logger = logging.getLogger("runner.lean")

D_END = float(np.log(1 * np.exp(-10)))  # espnet.nets.e2e_asr_common.end_detect's default, computed as it computes it


def check_search(search: Any) -> None:
    """Raise RunnerError naming what `LeanBeamSearch` cannot reproduce in this ESPnet search."""
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

    if not isinstance(search, BatchBeamSearch):
        raise RunnerError(f"{type(search).__name__} is not ESPnet's BatchBeamSearch")
    if search.hyp_primer is not None:
        raise RunnerError("hypothesis primers (Whisper) are not supported")
    if search.pre_beam_score_key != "full":
        raise RunnerError(f"pre_beam_score_key {search.pre_beam_score_key!r} is not supported")
    if "decoder" not in search.full_scorers:
        raise RunnerError("the search has no decoder scorer (decoder weight 0)")
    for name, scorer in search.full_scorers.items():
        if name == "decoder":
            check_decoder(scorer)
        elif not isinstance(scorer, LengthBonus):
            raise RunnerError(f"full scorer {name!r} ({type(scorer).__name__}) is not supported")
    for name, scorer in search.part_scorers.items():
        if name != "ctc" or not isinstance(scorer, CTCPrefixScorer):
            raise RunnerError(f"partial scorer {name!r} ({type(scorer).__name__}) is not supported")


def end_detect(ended: list[tuple[int, torch.Tensor]], i: int, window: int = 3) -> bool:
    """ESPnet's `end_detect` over (yseq length, score) pairs of the ended hypotheses (float32 differences, as ESPnet)."""
    if not ended:
        return False
    best = max((score for _, score in ended), key=float)
    count = 0
    for m in range(window):
        same_length = [score for length, score in ended if length == i - m]
        if same_length and float(max(same_length, key=float) - best) < D_END:
            count += 1
    return count == window


@dataclass
class Beam:
    """The running hypotheses, one row each: tokens, total and per-scorer scores, decoder outputs (MD's ASR)."""

    yseq: torch.Tensor  # (n, length), starting with <sos>
    score: torch.Tensor  # (n,)
    scores: dict[str, torch.Tensor]  # scorer -> (n,)
    hs: torch.Tensor | None  # (n, length - 1, d) when the search returns hidden states

    def __len__(self) -> int:
        return self.yseq.size(0)

    def extend(self, previous: torch.Tensor, tokens: torch.Tensor, score: torch.Tensor,
               step_scores: dict[str, torch.Tensor], hidden: torch.Tensor | None) -> Beam:
        """The hypotheses `previous` extended by `tokens`, with their new scores."""
        hs = None
        if hidden is not None:
            new = hidden[previous].unsqueeze(1)
            hs = new if self.hs is None else torch.cat((self.hs[previous], new), dim=1)
        return Beam(torch.cat((self.yseq[previous], tokens.unsqueeze(1)), dim=1), score,
                    {name: self.scores[name][previous] + values[previous, tokens] for name, values in step_scores.items()},
                    hs)

    def select(self, rows: torch.Tensor) -> Beam:
        return Beam(self.yseq[rows], self.score[rows], {k: v[rows] for k, v in self.scores.items()},
                    None if self.hs is None else self.hs[rows])


class Ended:
    """Ended hypotheses, as ESPnet `Hypothesis` tuples, in the order ESPnet collects them."""

    def __init__(self) -> None:
        self.hypotheses: list[Any] = []
        self.lengths: list[tuple[int, torch.Tensor]] = []  # (yseq length, score), for end detection

    def add(self, beam: Beam, rows: list[int]) -> None:
        from espnet.nets.beam_search import Hypothesis

        for b in rows:
            self.hypotheses.append(Hypothesis(yseq=beam.yseq[b], score=beam.score[b],
                                              scores={k: v[b] for k, v in beam.scores.items()}, states={},
                                              hs=beam.hs[b] if beam.hs is not None else []))
            self.lengths.append((beam.yseq.size(1), beam.score[b]))


class LeanBeamSearch(torch.nn.Module):
    """A drop-in for one ESPnet `BatchBeamSearch` (`forward(x, maxlenratio, minlenratio, pre_x)`).

    Args:
        search: the ESPnet search it replaces (checked by `check_search`); its scorers stay in use.
    """

    engine_name = "lean"  # reports name the search engine by this (ModelBundle.search_engine)

    def __init__(self, search: Any) -> None:
        super().__init__()
        check_search(search)
        self._espnet = [search]  # a list, not a submodule: the decoders stay owned by the model
        self.sos, self.eos = search.sos, search.eos
        self.beam_size, self.n_vocab = search.beam_size, search.n_vocab
        self.pre_beam_size, self.do_pre_beam = search.pre_beam_size, search.do_pre_beam
        self.return_hs, self.normalize_length = search.return_hs, search.normalize_length
        self.weights = dict(search.weights)

    @property
    def espnet(self) -> Any:
        """The ESPnet search this one replaces; its scorer tables are this search's."""
        return self._espnet[0]

    # The scorer tables are ESPnet's own, so `ModelBundle.rewire_searches` (after a plugin
    # replaces a decoder) and every reader of them see what this search runs.
    @property
    def scorers(self) -> dict[str, Any]:
        return self.espnet.scorers

    @property
    def full_scorers(self) -> dict[str, Any]:
        return self.espnet.full_scorers

    @property
    def part_scorers(self) -> dict[str, Any]:
        return self.espnet.part_scorers

    @property
    def nn_dict(self) -> torch.nn.ModuleDict:
        return self.espnet.nn_dict

    def forward(self, x: torch.Tensor, maxlenratio: float = 0.0, minlenratio: float = 0.0,
                pre_x: torch.Tensor | None = None) -> list[Any]:
        """N-best hypotheses (ESPnet `Hypothesis` tuples), best first, as `BeamSearch.forward` returns them."""
        source = pre_x if pre_x is not None else x
        if maxlenratio == 0:
            maxlen = source.shape[0]
        elif maxlenratio < 0:
            maxlen = -1 * int(maxlenratio)
        else:
            maxlen = max(1, int(maxlenratio * source.size(0)))
        minlen = -1 * int(minlenratio) if minlenratio < 0 else int(minlenratio * source.size(0))
        with torch.inference_mode():  # no autograd bookkeeping on any op of the loop
            ended = self._decode(x, pre_x, maxlen, minlen, maxlenratio)
        if self.normalize_length:
            ended = sorted(ended, key=lambda h: h.score / (len(h.yseq) - 1), reverse=True)
        else:
            ended = sorted(ended, key=lambda h: h.score, reverse=True)
        if not ended:
            logger.warning("no hypothesis ended; decoding again with a smaller minlenratio")
            return [] if minlenratio < 0.1 else self.forward(x, maxlenratio, max(0.0, minlenratio - 0.1), pre_x)
        return ended

    def _decode(self, x: torch.Tensor, pre_x: torch.Tensor | None, maxlen: int, minlen: int,
                maxlenratio: float) -> list[Any]:
        """ESPnet's main loop (`BeamSearch.forward`'s) over `BatchBeamSearch.search` and `post_process`."""
        step = DecoderStep(self.full_scorers["decoder"], x, pre_x, maxlen, self.beam_size)
        ctc, ctc_scorer = None, self.part_scorers.get("ctc")
        if ctc_scorer is not None:
            ctc_input = x if pre_x is None else pre_x
            ctc = CtcPrefixState(ctc_scorer.ctc.log_softmax(ctc_input.unsqueeze(0))[0], ctc_scorer.eos)
        beam = Beam(torch.full((1, 1), self.sos, dtype=torch.long, device=x.device),
                    torch.zeros(1, dtype=x.dtype, device=x.device),
                    {name: torch.zeros(1, dtype=x.dtype, device=x.device) for name in self.scorers},
                    None)
        ended = Ended()
        for i in range(maxlen):
            self.search(i)  # counted per step by runner.decode.StepCounter
            weighted, scores = self._score(beam, step, ctc, i)
            top = weighted.view(-1).topk(self.beam_size)[1]
            previous = torch.div(top, self.n_vocab, rounding_mode="trunc")
            tokens = top % self.n_vocab
            beam = beam.extend(previous, tokens, weighted[previous, tokens], scores, step.hidden if self.return_hs
                               else None)
            step.select(previous)
            if ctc is not None:
                ctc.select(previous, tokens)
            if i == maxlen - 1:  # ESPnet adds <eos> in the last position so that something ends
                beam.yseq = torch.cat((beam.yseq, beam.yseq.new_full((len(beam), 1), self.eos)), dim=1)
            finished = (beam.yseq[:, -1] == self.eos).tolist()
            if any(finished):
                if i >= minlen:
                    ended.add(beam, [b for b, done in enumerate(finished) if done])
                keep = torch.tensor([b for b, done in enumerate(finished) if not done], dtype=torch.long,
                                    device=x.device)
                beam = beam.select(keep)
                step.select(keep)
                if ctc is not None:
                    ctc.keep(keep)
            if maxlenratio == 0.0 and end_detect(ended.lengths, i):
                break
            if len(beam) == 0:
                break
        return ended.hypotheses

    def _score(self, beam: Beam, step: DecoderStep, ctc: CtcPrefixState | None,
               i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted scores (n, V) of every extension, summed in ESPnet's order, and each scorer's own."""
        logp = step(beam.yseq[:, -1])
        scores = {"decoder": logp}
        weighted = self.weights["decoder"] * logp
        for name in self.full_scorers:
            if name != "decoder":  # LengthBonus: a score of 1 for every token
                scores[name] = logp.new_ones(()).expand(len(beam), self.n_vocab)
                weighted = weighted + self.weights[name] * scores[name]
        if ctc is not None:
            ids = torch.topk(weighted, self.pre_beam_size, dim=-1)[1] if self.do_pre_beam else None
            scores["ctc"] = ctc.score(beam.yseq[:, -1], i, ids)
            weighted = weighted + self.weights["ctc"] * scores["ctc"]
        return weighted + beam.score.unsqueeze(1), scores

    def search(self, i: int) -> None:
        """Marks one output step (`runner.decode.StepCounter` counts these calls, as it counts ESPnet's)."""
