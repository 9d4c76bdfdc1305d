"""Building an evaluation's `Report`: size, parameters, BLEU, chrF, WER, latency, throughput and conditions."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from runner.conditions import RunConditions
from runner.data import PreloadedSet
from runner.decode import SEARCH_STAGES, STAGES, Translation
from runner.metrics.bleu import corpus_bleu, corpus_chrf
from runner.metrics.latency import latency_stats
from runner.metrics.throughput import throughput
from runner.metrics.wer import source_wer
from runner.options import EvaluateOptions
from runner.pipeline import batch_ranges
from runner.report import Metrics, Report


def build_report(conditions: RunConditions, model: dict[str, Any], preloaded: PreloadedSet, options: EvaluateOptions,
                 translations: list[Translation], gpu_peak_memory_bytes: int | None = None) -> Report:
    """The `Report` of decoded utterances: every figure from `translations`, with the run's conditions.

    Args:
        conditions: what the runner decoded them under (`Runner.conditions`).
        model: the model's files and summary (`Runner.model_info`).
        preloaded: the utterances, in the order of `translations`.
        options: how they were decoded (warm-up, batch size, selection).
        translations: one per utterance.
        gpu_peak_memory_bytes: the most GPU memory the decoding held (None on the CPU).

    Returns:
        The report; latency and throughput over the utterances after the warm-up ones.
    """
    utterances = preloaded.utterances
    hypotheses = [t.text for t in translations]
    references = [u.segment.reference for u in utterances]
    summary = model["summary"]
    if summary.get("task") == "asr":  # its translations are transcripts, its references the source's
        wer = source_wer(hypotheses, references)
    else:
        wer = (source_wer([t.source_text for t in translations], [u.segment.source for u in utterances])
               if summary["multidecoder"] else None)
    return Report(
        command=shlex.join(sys.argv) if Path(sys.argv[0]).name == "runner" else None,
        model=model,
        data=_data_fields(preloaded, options),
        conditions=conditions.evaluated(options.warmup, options.batch_size),
        options=options,
        metrics=Metrics(
            size_mb=summary["size_bytes"] / 1e6,
            model_file_bytes=summary["model_file_bytes"],
            parameters=summary["parameters"],
            bleu=corpus_bleu(hypotheses, references),
            chrf=corpus_chrf(hypotheses, references),
            source_wer=wer,
            gpu_peak_memory_bytes=gpu_peak_memory_bytes,
            **_timing(preloaded, options, translations),
        ),
        utterances=[
            {
                "id": u.segment.id,
                "audio_seconds": u.seconds,
                "reference": u.segment.reference,
                "hypothesis": t.text,
                "source_reference": u.segment.source,
                "source_hypothesis": t.source_text,
                "seconds": t.seconds,
                "stages": t.stages,
                "steps": t.steps,
                "batch_size": t.batch_size,
                "warmup": i < options.warmup,
            }
            for i, (u, t) in enumerate(zip(utterances, translations))
        ],
    )


def _data_fields(preloaded: PreloadedSet, options: EvaluateOptions) -> dict[str, Any]:
    """The report's `data`: which test set, which of its utterances, how much audio."""
    test_set = preloaded.test_set
    return {
        "path": str(test_set.path),
        "format": test_set.format,
        "split": test_set.split,
        "language_pair": f"{test_set.source_lang}-{test_set.target_lang}",
        "segments_in_split": len(test_set.segments),
        "n": len(preloaded.utterances),
        "selection": "random" if options.sample and options.limit else "first",
        "seed": preloaded.seed,
        "audio_seconds": preloaded.audio_seconds,
        "preload_memory_bytes": preloaded.memory_bytes,
        "content_hash": preloaded.content_hash,
    }


def _timing(preloaded: PreloadedSet, options: EvaluateOptions, translations: list[Translation]) -> dict[str, Any]:
    """Latency, throughput, stage times and search steps over the utterances after the warm-up ones."""
    utterances = preloaded.utterances
    timed = list(range(options.warmup, len(utterances)))
    latency = latency_stats([translations[i].seconds for i in timed], [utterances[i].seconds for i in timed])
    # Per batch (one utterance each when not batched): its wall time, stage times and search steps
    # count once; a batch's search takes as many steps as its longest search.
    batches = [b for b in batch_ranges(len(utterances), options.warmup, options.batch_size) if b.start >= options.warmup]
    firsts = [translations[b.start] for b in batches]
    speed = throughput([t.seconds for t in firsts], len(timed), sum(utterances[i].seconds for i in timed),
                       options.batch_size)
    stages = {name: sum(t.stages.get(name, 0.0) for t in firsts) / len(timed) for name in STAGES}
    searches = [name for name in SEARCH_STAGES if all(name in translations[i].steps for i in timed)]
    steps = {name: sum(translations[i].steps[name] for i in timed) for name in searches}
    batch_steps = {name: sum(max(translations[i].steps[name] for i in b) for b in batches) for name in searches}
    return {"latency": latency, "throughput": speed, "stages_mean": stages,
            "steps_mean": {name: steps[name] / len(timed) for name in searches},
            "seconds_per_step": {name: stages[name] * len(timed) / batch_steps[name] for name in searches
                                 if batch_steps[name]}}
