"""The conditions of a run: everything a figure was measured under, built once by the `Runner`.

Like sacrebleu's `Signature`, a `RunConditions` travels with every figure: the report's JSON and
terminal table, `/info` and the web page of `runner serve`, and every sweep row read it, and none of
them rebuilds it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from runner.decode import DecodeOptions
from runner.plugin import Calibration


@dataclass(frozen=True)
class RunConditions:
    """What a run was measured under.

    Attributes:
        device: where the model ran (cpu, cuda:0).
        threads: the runner's intra-op threads.
        int8_backend: torch.ao's quantized engine (x86, fbgemm, onednn, qnnpack) the plugins packed int8
            weights for ("none" for a float model); not a search engine.
        search: the search engine of the beam searches ("espnet", "lean", or per search).
        hop_length: the frontend's STFT hop (None without an STFT frontend).
        dtype: the number format the last number-format plugin left ("float32" without one).
        plugins: each plugin's description (name, label, config, outcomes, details), in application order.
        calibrations: (plugin name, its calibration record) for every plugin that calibrated.
        decode: the decoding options.
        machine: the environment manifest (CPU model, kind and flags, cores, GPU, library versions, commit).
        warmup: leading utterances left out of latency; batch_size: utterances per beam search.
        model_hash: the model file's content hash.
        runtime: what the search engine runs on beyond torch (ONNX Runtime's version, execution provider and
            graph optimization level); empty for an engine that runs in torch.
    """

    device: str
    threads: int
    int8_backend: str
    search: str
    hop_length: int | None
    dtype: str
    plugins: tuple[dict[str, Any], ...]
    calibrations: tuple[tuple[str, Calibration], ...]
    decode: DecodeOptions
    machine: dict[str, Any] = field(default_factory=dict)
    warmup: int = 1
    batch_size: int = 1
    model_hash: str = ""
    runtime: dict[str, str] = field(default_factory=dict)

    def evaluated(self, warmup: int, batch_size: int) -> RunConditions:
        """These conditions for an evaluation with `warmup` and `batch_size`."""
        return replace(self, warmup=warmup, batch_size=batch_size)

    def model_dict(self) -> dict[str, Any]:
        """What the model ran as, without the machine or the evaluation (warm-up, batch): `runner serve`'s
        `/info` gives it per served model."""
        return {"threads": self.threads, "int8_backend": self.int8_backend, "device": self.device,
                "hop_length": self.hop_length, "search": self.search, "plugins": list(self.plugins),
                "dtype": self.dtype, "runtime": dict(self.runtime)}

    def to_dict(self) -> dict[str, Any]:
        """The report JSON's `conditions`: the machine's fields and the run's, flat (decoding options are
        written beside it, as the report's `decode`)."""
        return {**self.machine, **self.model_dict(), "warmup": self.warmup, "batch_size": self.batch_size}

    def plugin_labels(self) -> str:
        """The plugins as the conditions line names them ("none" without plugins)."""
        return ", ".join(p.get("label", p["name"]) for p in self.plugins) or "none"

    def line(self) -> str:
        """The terminal's conditions line."""
        decode = asdict(self.decode)
        runtime = f" ({', '.join(self.runtime.values())})" if self.runtime else ""
        return (f"device {self.device}, cpu {self.machine.get('cpu_kind', 'unknown')}, threads {self.threads}, "
                f"int8 backend {self.int8_backend}, search {self.search}{runtime}, hop {self.hop_length}, "
                f"dtype {self.dtype}, "
                f"plugins {self.plugin_labels()}, warm-up {self.warmup}, batch {self.batch_size}, "
                f"beam {decode['beam_size']}/asr {decode['asr_beam_size']}")
