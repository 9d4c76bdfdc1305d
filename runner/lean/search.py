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

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.device import clock
from runner.engines import SearchEngine, Searched, check_deadline, length_bounds, longest_output, settled
from runner.errors import RunnerError
from runner.lean.ctc import CtcPrefixState
from runner.lean.decoder import DecoderStep, check_decoder
from runner.lean.whisper import WhisperStep, check_whisper_decoder
from runner.whisper.offline import is_whisper_decoder

logger = logging.getLogger("runner.lean")

D_END = float(np.log(1 * np.exp(-10)))  # espnet.nets.e2e_asr_common.end_detect's default, computed as it computes it


def check_search(search: Any) -> None:
    """Raise RunnerError naming what `LeanBeamSearch` cannot reproduce in this ESPnet search."""
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

    if not isinstance(search, BatchBeamSearch):
        raise RunnerError(f"{type(search).__name__} is not ESPnet's BatchBeamSearch")
    whisper = is_whisper_decoder(search.full_scorers.get("decoder"))
    if search.hyp_primer is not None and not whisper:
        raise RunnerError("hypothesis primers are supported for Whisper's decoder only")
    if search.pre_beam_score_key != "full":
        raise RunnerError(f"pre_beam_score_key {search.pre_beam_score_key!r} is not supported")
    if "decoder" not in search.full_scorers:
        raise RunnerError("the search has no decoder scorer (decoder weight 0)")
    for name, scorer in search.full_scorers.items():
        if name == "decoder":
            check_whisper_decoder(scorer) if whisper else check_decoder(scorer)
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

    def add(self, beam: Beam, rows: list[int], append: int | None = None) -> None:
        """Collect these rows of `beam`, with the token `append` after each one's last (ESPnet's <eos> at maxlen)."""
        from espnet.nets.beam_search import Hypothesis

        for b in rows:
            yseq = beam.yseq[b] if append is None else torch.cat((beam.yseq[b], beam.yseq.new_full((1,), append)))
            self.hypotheses.append(Hypothesis(yseq=yseq, score=beam.score[b],
                                              scores={k: v[b] for k, v in beam.scores.items()}, states={},
                                              hs=beam.hs[b] if beam.hs is not None else []))
            self.lengths.append((yseq.size(0), beam.score[b]))


class LeanBeamSearch(SearchEngine):
    """ESPnet's `BatchBeamSearch` with the beam in tensors; several utterances share each step.

    Args:
        search: the ESPnet search it replaces (checked by `check_search`); its scorers stay in use.
    """

    name = "lean"
    description = "ESPnet's search step for step with the beam held in tensors and keys/values cached"
    batches = True

    @classmethod
    def check(cls, search: Any) -> None:
        check_search(search)

    def run(self, xs: Sequence[torch.Tensor], maxlenratio: float, minlenratio: float,
            pre_xs: Sequence[torch.Tensor] | None) -> list[Searched]:
        """Each utterance's search, searched together: one decoder call per step for every beam.

        Args:
            xs: each utterance's encoder output (T_i, d), the memory its decoder attends to.
            maxlenratio, minlenratio: as `BeamSearch.forward`'s, applied to each utterance's own length.
            pre_xs: each utterance's speech encoder output for a speech-attention decoder (and its CTC).

        Returns:
            One result per utterance, in the order given, each with the n-best it gets searched alone.
        """
        started = clock(xs[0].device)
        pre = list(pre_xs) if pre_xs is not None else [None] * len(xs)
        longest = longest_output(self)
        bounds = [length_bounds(x if p is None else p, maxlenratio, minlenratio, longest) for x, p in zip(xs, pre)]
        with torch.inference_mode():  # no autograd bookkeeping on any op of the loop
            ended, steps = self._decode(list(xs), pre, [b[0] for b in bounds], [b[1] for b in bounds], maxlenratio)
        results: list[list[Any]] = []
        for index, hypotheses in enumerate(ended):
            if self.normalize_length:
                hypotheses = sorted(hypotheses, key=lambda h: h.score / (len(h.yseq) - 1), reverse=True)
            else:
                hypotheses = sorted(hypotheses, key=lambda h: h.score, reverse=True)
            if not hypotheses and minlenratio >= 0.1:  # ESPnet's retry, for this utterance alone
                logger.warning("no hypothesis ended; decoding again with a smaller minlenratio")
                again = self.search(xs[index], maxlenratio, max(0.0, minlenratio - 0.1), pre[index])
                hypotheses, steps[index] = again.nbest, steps[index] + again.steps
            results.append(hypotheses)
        seconds = clock(xs[0].device) - started
        return [Searched(nbest, count, seconds) for nbest, count in zip(results, steps)]

    def _decode(self, xs: list[torch.Tensor], pre_xs: list[torch.Tensor | None], maxlens: list[int],
                minlens: list[int], maxlenratio: float) -> tuple[list[list[Any]], list[int]]:
        """ESPnet's main loop (`BeamSearch.forward`'s over `BatchBeamSearch.search` and `post_process`) for
        several utterances at once; returns each one's ended hypotheses and the steps it took.

        The running rows are grouped by utterance (`Layout`); the decoder runs on all of them, and each
        utterance's top-k, ended hypotheses, end detection and length limits are its own. An utterance
        that is done leaves the batch.
        """
        speech = None if pre_xs[0] is None else pre_xs
        step = self.decoder_step(xs, speech, max(maxlens))
        ctc_scorer = self.part_scorers.get("ctc")
        ctcs: list[CtcPrefixState | None] = [None] * len(xs)
        if ctc_scorer is not None:
            ctcs = [CtcPrefixState(self.ctc_log_probs(ctc_scorer.ctc, x if p is None else p), ctc_scorer.eos)
                    for x, p in zip(xs, pre_xs)]
        x = xs[0]
        count = len(xs)
        primer = self.hyp_primer or [self.sos]  # Whisper's start-of-transcript, language and task
        beam = Beam(torch.tensor([primer] * count, dtype=torch.long, device=x.device),
                    torch.zeros(count, dtype=x.dtype, device=x.device),
                    {name: torch.zeros(count, dtype=x.dtype, device=x.device) for name in self.scorers},
                    None)
        layout = Layout(list(range(count)), [1] * count, self.beam_size)
        if len(primer) > 1:
            step.prefill(beam.yseq[:, :-1], layout)
        ended = [Ended() for _ in xs]
        steps = [0] * count
        for i in range(max(maxlens)):
            check_deadline(self.stage, i + 1)
            for utterance in layout.utterances:
                steps[utterance] += 1
            weighted, scores = self._score(beam, step, [ctcs[u] for u in layout.utterances], layout, i)
            previous, tokens, best = layout.top(weighted, self.n_vocab)
            beam = beam.extend(previous, tokens, best, scores, step.hidden if self.return_hs else None)
            step.select(previous)
            for block, utterance in enumerate(layout.utterances):
                ctc = ctcs[utterance]
                if ctc is not None:
                    rows = slice(block * self.beam_size, (block + 1) * self.beam_size)
                    ctc.select(previous[rows] - layout.offsets[block], tokens[rows])
            layout = Layout(layout.utterances, [self.beam_size] * len(layout.utterances), self.beam_size)
            finished = (beam.yseq[:, -1] == self.eos).tolist()
            keep_rows: list[int] = []
            keep_counts: list[int] = []
            done: list[int] = []
            for block, utterance in enumerate(layout.utterances):
                rows = range(layout.offsets[block], layout.offsets[block] + self.beam_size)
                if i == maxlens[utterance] - 1:  # ESPnet adds <eos> in the last position so that something ends
                    if i >= minlens[utterance]:
                        ended[utterance].add(beam, list(rows), append=self.eos)
                    kept = []
                else:
                    if i >= minlens[utterance]:
                        ended[utterance].add(beam, [b for b in rows if finished[b]])
                    kept = [b for b in rows if not finished[b]]
                if not kept or (maxlenratio == 0.0 and end_detect(ended[utterance].lengths, i)) or (
                        self.settled_nbest and settled([float(score) for _, score in ended[utterance].lengths],
                                                       float(beam.score[kept].max()), self.settled_nbest)):
                    done.append(block)
                    continue
                if ctcs[utterance] is not None and len(kept) < self.beam_size:
                    ctcs[utterance].keep(torch.tensor([b - rows.start for b in kept], dtype=torch.long,
                                                      device=x.device))
                keep_rows.extend(kept)
                keep_counts.append(len(kept))
            if len(keep_rows) < len(beam):
                keep = torch.tensor(keep_rows, dtype=torch.long, device=x.device)
                beam = beam.select(keep)
                step.select(keep)
                if done:
                    staying = [b for b in range(len(layout.utterances)) if b not in done]
                    step.keep_utterances(torch.tensor(staying, dtype=torch.long, device=x.device))
                layout = Layout([u for b, u in enumerate(layout.utterances) if b not in done], keep_counts,
                                self.beam_size, [row % self.beam_size for row in keep_rows])
            if not layout.utterances:
                break
        return [e.hypotheses for e in ended], steps

    def decoder_step(self, xs: list[torch.Tensor], speeches: list[torch.Tensor] | None, max_length: int) -> Any:
        """The decoder's step for these utterances (`DecoderStep`'s interface: call, `select`, `keep_utterances`,
        `hidden`); an engine that runs the step elsewhere returns its own."""
        decoder = self.full_scorers["decoder"]
        if is_whisper_decoder(decoder):
            positions = decoder.decoders.positional_embedding.size(0)  # past them ESPnet's decoder fails too
            return WhisperStep(decoder, xs, min(max_length + len(self.hyp_primer or []) + 1, positions), self.beam_size)
        return DecoderStep(decoder, xs, speeches, max_length, self.beam_size)

    def ctc_log_probs(self, ctc: Any, x: torch.Tensor) -> torch.Tensor:
        """A CTC head's log-probabilities (T, V) over one utterance's encoder output (T, d)."""
        return ctc.log_softmax(x.unsqueeze(0))[0]

    def _score(self, beam: Beam, step: DecoderStep, ctcs: list[CtcPrefixState | None], layout: Layout,
               i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted scores (n, V) of every extension, summed in ESPnet's order, and each scorer's own."""
        logp = step(beam.yseq[:, -1], layout)
        scores = {"decoder": logp}
        weighted = self.weights["decoder"] * logp
        for name in self.full_scorers:
            if name != "decoder":  # LengthBonus: a score of 1 for every token
                scores[name] = logp.new_ones(()).expand(len(beam), self.n_vocab)
                weighted = weighted + self.weights[name] * scores[name]
        if ctcs[0] is not None:
            ids = torch.topk(weighted, self.pre_beam_size, dim=-1)[1] if self.do_pre_beam else None
            last = beam.yseq[:, -1]
            parts = []
            for block, ctc in enumerate(ctcs):
                rows = slice(layout.offsets[block], layout.offsets[block] + layout.counts[block])
                parts.append(ctc.score(last[rows], i, None if ids is None else ids[rows]))
            scores["ctc"] = parts[0] if len(parts) == 1 else torch.cat(parts)
            weighted = weighted + self.weights["ctc"] * scores["ctc"]
        return weighted + beam.score.unsqueeze(1), scores

class Layout:
    """Which running rows belong to which utterance: contiguous blocks, one per utterance still searching.

    Args:
        utterances: the utterances still searching (indices into the batch), in row order.
        counts: each one's running hypotheses.
        beam_size: the most hypotheses an utterance holds (its slots in padded views).
        positions: each row's slot inside its utterance's block (default: 0, 1, ... per block).
    """

    def __init__(self, utterances: list[int], counts: list[int], beam_size: int,
                 positions: list[int] | None = None) -> None:
        self.utterances, self.counts, self.beam_size = utterances, counts, beam_size
        self.offsets = list(itertools.accumulate([0] + counts[:-1]))
        self.full = all(c == beam_size for c in counts)
        if positions is None:
            positions = [k for c in counts for k in range(c)]
        self._positions = positions
        self._slots: torch.Tensor | None = None

    def slots(self, device: torch.device) -> torch.Tensor:
        """Each row's place in a (utterances x beam) padded view."""
        if self._slots is None:
            blocks = [block for block, c in enumerate(self.counts) for _ in range(c)]
            self._slots = torch.tensor([b * self.beam_size + k for b, k in zip(blocks, self._positions)],
                                       dtype=torch.long, device=device)
        return self._slots

    def top(self, weighted: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each utterance's `beam_size` best (row, token) extensions: source rows, tokens and scores, by block."""
        if len(self.utterances) == 1:
            best, top = weighted.view(-1).topk(self.beam_size)
            return torch.div(top, vocab, rounding_mode="trunc"), top % vocab, best
        if self.full:
            padded, slot_rows = weighted, None
        else:  # rows a block lacks score -inf, so top-k picks only its own hypotheses
            slots = self.slots(weighted.device)
            padded = weighted.new_full((len(self.utterances) * self.beam_size, vocab), float("-inf"))
            padded.index_copy_(0, slots, weighted)
            slot_rows = torch.zeros(len(padded), dtype=torch.long, device=weighted.device)
            slot_rows[slots] = torch.arange(len(slots), device=weighted.device)
        best, top = padded.view(len(self.utterances), -1).topk(self.beam_size)
        slot = torch.div(top, vocab, rounding_mode="trunc") + torch.arange(
            0, padded.size(0), self.beam_size, device=weighted.device).unsqueeze(1)
        previous = slot.view(-1) if slot_rows is None else slot_rows[slot.view(-1)]
        return previous, (top % vocab).view(-1), best.view(-1)
