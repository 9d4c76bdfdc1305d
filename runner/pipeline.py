"""Several utterances in one beam search: `Speech2Text.__call__`'s steps with the searches batched.

ESPnet decodes one utterance per call (and has no multi-utterance search for attention
decoders). Here each utterance's frontend, encoder and MD encoder run alone, exactly as
`Speech2Text.__call__` runs them, while each beam search runs once for the whole batch on the
lean engine (`LeanBeamSearch.forward_batch`): one decoder call per step for every utterance's
hypotheses, each utterance's top-k, end detection and length limits its own. Its results are
what `Speech2Text.__call__` returns for each utterance alone (tests compare them).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from runner.decode import StageTimer, StepCounter, Translation, check_length, stage_modules
from runner.device import clock
from runner.errors import AudioTooShortError, RunnerError


def batch_ready(speech2text: Any) -> str | None:
    """Why `translate_batch` cannot batch this model's searches (None when it can)."""
    model = speech2text.st_model
    if getattr(speech2text, "ctc_greedy", False) or getattr(speech2text, "beam_search_transducer", None):
        return "greedy CTC and transducer decoding are not beam searches it batches"
    searches = {"st_search": speech2text.beam_search}
    if getattr(model, "use_multidecoder", False):
        searches["asr_search"] = speech2text.asr_beam_search
    espnet = [name for name, search in searches.items() if not hasattr(search, "forward_batch")]
    if espnet:
        return (f"{' and '.join(espnet)} run{'s' if len(espnet) == 1 else ''} ESPnet's search engine, which "
                f"decodes one utterance at a time; use the lean engine (--search lean)")
    return None


def translate_batch(speech2text: Any, waveforms: list[np.ndarray],
                    context: contextlib.AbstractContextManager[Any] | None = None) -> list[Translation]:
    """Translate several utterances with their beam searches batched; each result as if decoded alone.

    Args:
        speech2text: ESPnet's `Speech2Text` whose searches run on the lean engine (see `batch_ready`).
        waveforms: mono float32 samples at the model's rate, one array per utterance.
        context: entered around the whole batch (plugins' translation contexts).

    Returns:
        One `Translation` per waveform, in order. Each one's `seconds` is the batch's wall time (when
        its result is ready), `stages` the batch's time per stage, `steps` its own search steps, and
        `batch_size` the batch's size.

    Raises:
        RunnerError: the searches cannot be batched (`batch_ready` says why).
        AudioTooShortError: a waveform is too short for the frontend or the encoder (naming which).
    """
    reason = batch_ready(speech2text)
    if reason is not None:
        raise RunnerError(f"batched decoding: {reason}")
    for index, waveform in enumerate(waveforms):
        try:
            check_length(speech2text, waveform)
        except AudioTooShortError as error:
            raise AudioTooShortError(f"utterance {index} of the batch: {error}") from error
    model = speech2text.st_model
    multidecoder = getattr(model, "use_multidecoder", False)
    modules = stage_modules(speech2text)
    device = torch.device(speech2text.device)
    timer = StageTimer({name: modules[name] for name in ("frontend", "encoder", "md_encoder")}, device)
    searched = {"asr_search": 0.0, "st_search": 0.0}
    counter = StepCounter({"asr_search": speech2text.asr_beam_search if multidecoder else None,
                           "st_search": speech2text.beam_search})  # here for the decoding deadline
    with timer, counter, context or contextlib.nullcontext(), torch.no_grad():  # Speech2Text.__call__ is no_grad too
        started = clock(device)
        encoded = [_encode(speech2text, waveform) for waveform in waveforms]
        asr_results: list[list[Any]] = [[] for _ in waveforms]
        pre_xs = None
        steps: list[dict[str, int]] = [{} for _ in waveforms]
        if multidecoder:
            search_started = clock(device)
            asr_nbest = speech2text.asr_beam_search.forward_batch(
                [asr_enc for _, asr_enc in encoded], speech2text.asr_maxlenratio, speech2text.asr_minlenratio)
            searched["asr_search"] = clock(device) - search_started
            for index, count in enumerate(speech2text.asr_beam_search.steps):
                steps[index]["asr_search"] = count
            asr_results = [[_asr_result(speech2text, hyp) for hyp in nbest] for nbest in asr_nbest]
            xs = [_md_encode(speech2text, results[0][-1]) for results in asr_results]
            if model.use_speech_attn:
                pre_xs = [enc for enc, _ in encoded]
        else:
            xs = [enc for enc, _ in encoded]
        search_started = clock(device)
        nbest = speech2text.beam_search.forward_batch(xs, speech2text.maxlenratio, speech2text.minlenratio, pre_xs)
        searched["st_search"] = clock(device) - search_started
        for index, count in enumerate(speech2text.beam_search.steps):
            steps[index]["st_search"] = count
        seconds = clock(device) - started
    stages = {"frontend": timer.seconds["frontend"], "encoder": timer.seconds["encoder"],
              "asr_search": searched["asr_search"], "md_encoder": timer.seconds["md_encoder"],
              "st_search": searched["st_search"]}
    if not multidecoder:
        stages.pop("asr_search")
    translations = []
    for index, hypotheses in enumerate(nbest):
        results = [_st_result(speech2text, hyp) for hyp in hypotheses[:speech2text.nbest]]
        text, tokens = (results[0][0] or "", results[0][1]) if results else ("", [])
        source_text = asr_results[index][0][0] if asr_results[index] else None
        translations.append(Translation(text, source_text, tokens, seconds, dict(stages), steps[index],
                                        batch_size=len(waveforms)))
    return translations


def _encode(speech2text: Any, waveform: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`Speech2Text.__call__`'s steps a-b for one utterance: (encoder output, ASR encoder output)."""
    speech = torch.tensor(waveform).unsqueeze(0).to(getattr(torch, speech2text.dtype))
    lengths = speech.new_full([1], dtype=torch.long, fill_value=speech.size(1))
    batch = {"speech": speech.to(speech2text.device), "speech_lengths": lengths.to(speech2text.device)}
    try:
        enc, _, asr_enc, _ = speech2text.st_model.encode(**batch, return_int_enc=True)
    except Exception as error:
        if type(error).__name__ == "TooShortUttError":
            raise AudioTooShortError(f"audio too short for the encoder's subsampling: {speech.size(1)} samples "
                                     f"give {error.actual_size} feature frames, it needs more than "
                                     f"{error.limit}") from error
        raise
    return enc[0], asr_enc[0]


def _asr_result(speech2text: Any, hyp: Any) -> tuple[str | None, list[str], list[int], Any, torch.Tensor]:
    """One ASR n-best entry as `Speech2Text.__call__` builds it: (text, tokens, token ids, hypothesis, hs)."""
    model = speech2text.st_model
    asr_hs = torch.stack(hyp.hs) if isinstance(hyp.hs, list) else hyp.hs
    token_int = [t for t in hyp.yseq.tolist() if t not in (model.src_sos, model.src_eos) and t != 0]
    token = speech2text.src_converter.ids2tokens(token_int)
    text = speech2text.src_tokenizer.tokens2text(token) if speech2text.src_tokenizer is not None else None
    return text, token, token_int, hyp, asr_hs


def _md_encode(speech2text: Any, asr_hs: torch.Tensor) -> torch.Tensor:
    """The MD encoder over the best ASR hypothesis's decoder states, as `Speech2Text.__call__` runs it."""
    hs = asr_hs.unsqueeze(0).to(speech2text.device)
    md_enc, _, _ = speech2text.st_model.md_encoder(hs, hs.new_full([1], dtype=torch.long, fill_value=hs.size(1)))
    return md_enc[0]


def _st_result(speech2text: Any, hyp: Any) -> tuple[str | None, list[str], list[int], Any]:
    """One ST n-best entry as `Speech2Text.__call__` builds it: (text, tokens, token ids, hypothesis)."""
    token_int = [t for t in hyp.yseq[1:-1].tolist() if t != 0]
    token = speech2text.converter.ids2tokens(token_int)
    text = speech2text.tokenizer.tokens2text(token) if speech2text.tokenizer is not None else None
    return text, token, token_int, hyp


def batch_ranges(count: int, warmup: int, batch_size: int) -> list[range]:
    """Consecutive utterance ranges: one at a time, or the warm-up utterances as one batch and the rest
    in batches of `batch_size` (so no timed batch includes a warm-up utterance)."""
    if batch_size == 1:
        return [range(i, i + 1) for i in range(count)]
    ranges = [range(0, warmup)] if warmup else []
    ranges += [range(start, min(start + batch_size, count)) for start in range(warmup, count, batch_size)]
    return ranges
