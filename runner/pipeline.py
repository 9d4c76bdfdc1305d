"""A translation's path: frontend and encoder, the ASR search, the MD encoder, the ST search, results.

These are `Speech2Text.__call__`'s steps (espnet2.bin.st_inference), run here so that each beam
search is called through the engine protocol (`runner.engines`): ESPnet's own search, the lean
engine, or a third party's, for one utterance or a batch. Each search returns its n-best with the
steps it took and its wall time, which is where the report's steps and search times come from.
Each utterance's frontend, encoder and MD encoder run alone, exactly as `Speech2Text.__call__` runs
them; an engine that `batches` searches a whole batch in one loop, each utterance's top-k, end
detection and length limits its own. At fp32 the results are `Speech2Text.__call__`'s (tests compare
every n-best with ESPnet's own call and with `espnet2.bin.st_inference`). A model whose searches
no engine runs (a transducer) is decoded by `Speech2Text.__call__` itself, without step counts.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from runner.decode import StageTimer, Translation, check_length, stage_modules
from runner.device import clock
from runner.engines import SearchEngine
from runner.errors import AudioTooShortError, RunnerError


def batch_ready(speech2text: Any) -> str | None:
    """Why `translate_batch` cannot search this model's utterances together (None when it can)."""
    if not engines_run(speech2text):
        return "greedy CTC and transducer decoding are not beam searches it batches"
    searches = _searches(speech2text)
    single = {name: search.name for name, search in searches.items() if not search.batches}
    if single:
        engines = sorted(set(single.values()))
        return (f"{' and '.join(single)} run{'s' if len(single) == 1 else ''} the {', '.join(engines)} search "
                f"engine, which decodes one utterance at a time; use the lean engine (--search lean)")
    return None


def _searches(speech2text: Any) -> dict[str, Any]:
    """The beam searches a translation runs, by stage."""
    searches = {"st_search": speech2text.beam_search}
    if getattr(speech2text.st_model, "use_multidecoder", False):
        searches["asr_search"] = speech2text.asr_beam_search
    return searches


def translate(speech2text: Any, waveform: np.ndarray,
              context: contextlib.AbstractContextManager[Any] | None = None) -> Translation:
    """One utterance, with wall time in total and per stage (on a GPU, read after the device finishes:
    see `runner.device.clock`) and each search's steps.

    Args:
        speech2text: ESPnet's `Speech2Text` (a `ModelBundle.speech2text`).
        waveform: mono float32 samples at the model's rate.
        context: entered around the call and inside the timing (plugins' translation contexts).

    Raises:
        AudioTooShortError: when the waveform is shorter than the frontend's window or gives the
            encoder too few frames for its subsampling (ESPnet's TooShortUttError).
    """
    if engines_run(speech2text):
        return _decode(speech2text, [waveform], context)[0]
    return _espnet_call(speech2text, waveform, context)


def engines_run(speech2text: Any) -> bool:
    """Whether every beam search of a translation runs on an engine (not greedy CTC or a transducer)."""
    return not getattr(speech2text, "ctc_greedy", False) and all(
        isinstance(search, SearchEngine) for search in _searches(speech2text).values())


def translate_batch(speech2text: Any, waveforms: list[np.ndarray],
                    context: contextlib.AbstractContextManager[Any] | None = None) -> list[Translation]:
    """Translate several utterances with their beam searches batched; each result as if decoded alone.

    Args:
        speech2text: ESPnet's `Speech2Text` whose searches run on an engine that batches (see `batch_ready`).
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
    return _decode(speech2text, waveforms, context)


def _decode(speech2text: Any, waveforms: list[np.ndarray],
            context: contextlib.AbstractContextManager[Any] | None) -> list[Translation]:
    """`Speech2Text.__call__`'s steps for every waveform, each search through its engine."""
    if len(waveforms) == 1:
        check_length(speech2text, waveforms[0])
    model = speech2text.st_model
    multidecoder = getattr(model, "use_multidecoder", False)
    modules = stage_modules(speech2text)
    device = torch.device(speech2text.device)
    timer = StageTimer({name: modules[name] for name in ("frontend", "encoder", "md_encoder")}, device)
    searched = {"asr_search": 0.0, "st_search": 0.0}
    steps: list[dict[str, int]] = [{} for _ in waveforms]
    graphs = getattr(speech2text.beam_search, "graphs", None)  # an engine that runs the encoders too
    with timer, context or contextlib.nullcontext(), torch.no_grad():  # Speech2Text.__call__ is no_grad too
        started = clock(device)
        encoded = [_encode(speech2text, waveform, graphs, timer) for waveform in waveforms]
        asr_results: list[list[Any]] = [[] for _ in waveforms]
        pre_xs = None
        if multidecoder:
            search_started = clock(device)
            asr = speech2text.asr_beam_search.search_batch(
                [asr_enc for _, asr_enc in encoded], speech2text.asr_maxlenratio, speech2text.asr_minlenratio)
            searched["asr_search"] = clock(device) - search_started
            for index, result in enumerate(asr):
                steps[index]["asr_search"] = result.steps
            asr_results = [[_asr_result(speech2text, hyp) for hyp in result.nbest] for result in asr]
            xs = [_md_encode(speech2text, results[0][-1], graphs, timer) for results in asr_results]
            if model.use_speech_attn:
                pre_xs = [enc for enc, _ in encoded]
        else:
            xs = [enc for enc, _ in encoded]
        search_started = clock(device)
        st = speech2text.beam_search.search_batch(xs, speech2text.maxlenratio, speech2text.minlenratio, pre_xs)
        searched["st_search"] = clock(device) - search_started
        for index, result in enumerate(st):
            steps[index]["st_search"] = result.steps
        seconds = clock(device) - started
    stages = {"frontend": timer.seconds["frontend"], "encoder": timer.seconds["encoder"],
              "asr_search": searched["asr_search"], "md_encoder": timer.seconds["md_encoder"],
              "st_search": searched["st_search"]}
    if not multidecoder:
        stages.pop("asr_search")
    translations = []
    for index, result in enumerate(st):
        results = [_st_result(speech2text, hyp) for hyp in result.nbest[:speech2text.nbest]]
        text, tokens = (results[0][0] or "", results[0][1]) if results else ("", [])
        source_text = asr_results[index][0][0] if asr_results[index] else None
        translations.append(Translation(text, source_text, tokens, seconds, dict(stages), steps[index],
                                        batch_size=len(waveforms), nbest=results, source_nbest=asr_results[index]))
    return translations


def _espnet_call(speech2text: Any, waveform: np.ndarray,
                 context: contextlib.AbstractContextManager[Any] | None) -> Translation:
    """`Speech2Text.__call__` itself, timed by stage (a model whose searches no engine runs)."""
    check_length(speech2text, waveform)
    device = torch.device(speech2text.device)
    timer = StageTimer(stage_modules(speech2text), device)
    with timer, context or contextlib.nullcontext():
        started = clock(device)
        try:
            output = speech2text(waveform)
        except Exception as error:
            _too_short(error, len(waveform))
            raise
        seconds = clock(device) - started
    if isinstance(output, tuple):  # multi-decoder: (st results, asr results)
        results, asr_results = output
    else:
        results, asr_results = output, []
    source_text = asr_results[0][0] if asr_results else None
    text, tokens = (results[0][0] or "", results[0][1]) if results else ("", [])
    return Translation(text, source_text, tokens, seconds, dict(timer.seconds), {}, nbest=results,
                       source_nbest=asr_results)


def _check_subsampling(model: Any, frames: int, samples: int) -> None:
    """Refuse, as ESPnet's encoder does, features too few for its subsampling (an exported graph cannot say)."""
    from espnet.nets.pytorch_backend.transformer.subsampling import check_short_utt

    embed = getattr(model.encoder, "embed", None)
    short, limit = check_short_utt(embed, frames) if embed is not None else (False, -1)
    if short:
        raise AudioTooShortError(f"audio too short for the encoder's subsampling: {samples} samples give {frames} "
                                 f"feature frames, it needs more than {limit}")


def _too_short(error: Exception, samples: int) -> None:
    """Raise ESPnet's TooShortUttError (espnet.nets.pytorch_backend.transformer.subsampling) as AudioTooShortError."""
    if type(error).__name__ == "TooShortUttError":
        raise AudioTooShortError(f"audio too short for the encoder's subsampling: {samples} samples give "
                                 f"{error.actual_size} feature frames, it needs more than {error.limit}") from error


def _encode(speech2text: Any, waveform: np.ndarray, graphs: Any, timer: StageTimer) -> tuple[torch.Tensor, torch.Tensor]:
    """`Speech2Text.__call__`'s steps a-b for one utterance: (encoder output, ASR encoder output); with an
    engine's `graphs`, the frontend in torch and the rest through them (timed as the encoder stage)."""
    speech = torch.tensor(waveform).unsqueeze(0).to(getattr(torch, speech2text.dtype))
    lengths = speech.new_full([1], dtype=torch.long, fill_value=speech.size(1))
    batch = {"speech": speech.to(speech2text.device), "speech_lengths": lengths.to(speech2text.device)}
    try:
        if graphs is not None:
            features, _ = speech2text.st_model.frontend(batch["speech"], batch["speech_lengths"])
            _check_subsampling(speech2text.st_model, features.size(1), speech.size(1))
            started = clock(speech2text.device)
            enc, asr_enc = graphs.encode(features)
            timer.seconds["encoder"] += clock(speech2text.device) - started
            return enc[0].to(speech2text.device), asr_enc[0].to(speech2text.device)
        enc, _, asr_enc, _ = speech2text.st_model.encode(**batch, return_int_enc=True)
    except Exception as error:
        _too_short(error, speech.size(1))
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


def _md_encode(speech2text: Any, asr_hs: torch.Tensor, graphs: Any, timer: StageTimer) -> torch.Tensor:
    """The MD encoder over the best ASR hypothesis's decoder states, as `Speech2Text.__call__` runs it (or through
    an engine's `graphs`, timed as the MD encoder stage)."""
    hs = asr_hs.unsqueeze(0).to(speech2text.device)
    if graphs is not None:
        started = clock(speech2text.device)
        md_enc = graphs.md_encode(hs)
        timer.seconds["md_encoder"] += clock(speech2text.device) - started
        return md_enc[0].to(speech2text.device)
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
