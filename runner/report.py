"""A finished evaluation: every figure, typed, with the conditions it was measured under.

Like sacrebleu's scores, each figure travels with what reproduces it: `Report.conditions` (a
`RunConditions`) holds threads, engines, hop, dtype, plugins, warm-up, decoding options, machine and
versions; `Report.options` the `EvaluateOptions` it ran with (as faster-whisper's `TranscriptionInfo`
carries its options); `Report.metrics` the typed figures. Nothing is serialized until `save` or
`to_dict`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.conditions import RunConditions
from runner.metrics.bleu import CorpusScore
from runner.metrics.latency import LatencyStats
from runner.metrics.throughput import Throughput
from runner.options import EvaluateOptions


@dataclass(frozen=True)
class Metrics:
    """The figures of one evaluation.

    Attributes:
        size_mb: MB (10^6 bytes) of `torch.save(model.state_dict())` after the plugins (of the exported graphs
            on an engine that runs them: `size_of` in the model summary says which).
        model_file_bytes: bytes of the model file that was loaded.
        parameters: every weight, packed quantized ones included.
        bleu: sacrebleu corpus BLEU with its signature.
        chrf: sacrebleu corpus chrF with its signature.
        source_wer: the ASR decoder's WER in percent (None without an ASR decoder or source text).
        latency: latency statistics over the timed (post-warm-up) utterances: each utterance's
            decoding wall time, or in a batch the batch's (when its result was ready).
        throughput: timed utterances and audio seconds per second of decoding wall time.
        stages_mean: seconds per stage (frontend, encoder, asr_search, md_encoder, st_search) per
            timed utterance (in batches: the batches' stage times over the utterances they decoded).
        steps_mean: mean output steps per utterance of each beam search (asr_search, st_search).
        seconds_per_step: each beam search's total time over its total steps (a batch's step counts once).
        gpu_peak_memory_bytes: the most GPU memory torch held while decoding (warm-up included);
            None on the CPU.
    """

    size_mb: float
    model_file_bytes: int
    parameters: int
    bleu: CorpusScore
    chrf: CorpusScore
    source_wer: float | None
    latency: LatencyStats
    throughput: Throughput | None
    stages_mean: dict[str, float]
    steps_mean: dict[str, float] = field(default_factory=dict)
    seconds_per_step: dict[str, float] = field(default_factory=dict)
    gpu_peak_memory_bytes: int | None = None


@dataclass
class Report:
    """One evaluation: what was measured, under which conditions, and every utterance's result."""

    command: str | None
    model: dict[str, Any]
    data: dict[str, Any]
    conditions: RunConditions
    options: EvaluateOptions
    metrics: Metrics
    utterances: list[dict[str, Any]]

    @property
    def decode(self) -> dict[str, Any]:
        """The decoding options, named as `espnet2.bin.st_inference` names them."""
        return self.conditions.decode.speech2text_kwargs()

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able values (what `save` writes)."""
        options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.options).items()}
        return {"command": self.command, "model": self.model, "data": self.data, "decode": self.decode,
                "conditions": self.conditions.to_dict(), "options": options, "metrics": asdict(self.metrics),
                "utterances": self.utterances}

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (synced, renamed): a crash mid-write never leaves a truncated results file.

        Raises:
            RunnerError: the file cannot be written, naming it and why.
        """
        from runner.outputs import write_atomic

        return write_atomic(Path(path), json.dumps(self.to_dict(), ensure_ascii=False, indent=2))

    @property
    def bleu(self) -> CorpusScore:
        return self.metrics.bleu

    @property
    def chrf(self) -> CorpusScore:
        return self.metrics.chrf

    @property
    def latency(self) -> LatencyStats:
        return self.metrics.latency

    @property
    def latency_mean(self) -> float:
        return self.metrics.latency.mean

    def hypotheses(self) -> list[str]:
        return [u["hypothesis"] for u in self.utterances]

    def references(self) -> list[str]:
        return [u["reference"] for u in self.utterances]

    def format(self) -> str:
        """The terminal table: the four headline figures, then latency detail, then conditions."""
        m, c, d = self.metrics, self.conditions, self.data
        lat, summary, machine = m.latency, self.model["summary"], c.machine
        wer = f"{m.source_wer:.1f} %" if m.source_wer is not None else "n/a (no ASR decoder or source text)"
        stages = "  ".join(f"{name} {seconds:.3f}" for name, seconds in m.stages_mean.items())
        selection = f"{d['selection']} {d['n']} of {d['segments_in_split']}" + (
            f", seed {d['seed']}" if d["selection"] == "random" else ""
        )
        rows = [
            ("model", f"{self.model['path']}  (sha256 {self.model['content_hash']}, {summary['model_class']}"
                      f"{', multi-decoder' if summary['multidecoder'] else ''})"),
            ("data", f"{d['path']}  split {d['split']}, {selection}, {d['audio_seconds']:.1f} s audio, "
                     f"preloaded {d['preload_memory_bytes'] / 1e6:.1f} MB"),
            ("conditions", c.line()),
            ("size", f"{m.size_mb:.2f} MB {summary.get('size_of', 'state_dict')}  "
                     f"({m.model_file_bytes / 1e6:.2f} MB model file)"),
            ("parameters", f"{m.parameters:,}"),
            ("BLEU", f"{m.bleu.score:.2f}  {m.bleu.signature}"),
            ("chrF", f"{m.chrf.score:.2f}"),
            ("source WER", wer),
            ("latency", f"mean {lat.mean:.3f} s  std {lat.std:.3f}  p50 {lat.p50:.3f}  p90 {lat.p90:.3f}  "
                        f"p99 {lat.p99:.3f}  total {lat.total:.2f} s  RTF {lat.rtf:.3f}  "
                        f"({lat.count} utterances after {c.warmup} warm-up"
                        + ("; each its batch's wall time)" if c.batch_size > 1 else ")")),
            ("throughput", _throughput(m.throughput)),
            ("stages (mean s)", stages),
            ("search steps", "  ".join(
                f"{name.removesuffix('_search')} {m.steps_mean[name]:.1f} per utterance"
                + (f", {1000 * m.seconds_per_step[name]:.2f} ms per step" if name in m.seconds_per_step else "")
                for name in m.steps_mean) or "n/a"),
            ("machine", f"{machine.get('cpu')} (cpu kind {machine.get('cpu_kind', 'unknown')}), "
                        f"{machine.get('cores')} cores; torch {machine['versions']['torch']}, "
                        f"espnet {machine['versions']['espnet']}"),
        ]
        if machine.get("gpu"):
            peak = m.gpu_peak_memory_bytes
            rows.append(("GPU", f"{machine['gpu']} ({machine['gpu_memory_bytes'] / 2**30:.1f} GiB, compute "
                                f"{machine['gpu_capability']}), CUDA {machine['cuda']}, cuDNN {machine['cudnn']}; "
                                "peak memory " + (f"{peak / 2**20:.1f} MiB while decoding" if peak is not None
                                                  else "n/a")))
        for name, record in c.calibrations:
            rows.append(("calibration", f"{name}: {record.utterances} utterances of split {record.split} of "
                                        f"{record.data} ({record.source}) in {record.seconds:.1f} s "
                                        f"(not part of latency)"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _throughput(speed: Throughput | None) -> str:
    if speed is None:
        return "n/a"
    batches = (f"{speed.batches} batches of up to {speed.batch_size}" if speed.batch_size > 1
               else "one at a time")
    return (f"{speed.utterances_per_second:.2f} utterances/s, {speed.audio_seconds_per_second:.2f} audio s/s  "
            f"({speed.wall_seconds:.2f} s decoding wall time, {batches})")
