"""Dynamic int8 quantization: int8 weights, activations quantized on the fly per call."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from runner.model import ModelBundle
from runner.plugin import MODEL_PARTS, Effects, NumberFormat, Plugin
from runner.quant.parts import MODULE_TYPES, check_globs, check_parts, named_targets, select_backend


@dataclass
class DynamicConfig:
    parts: list[str] = field(default_factory=lambda: list(MODEL_PARTS))
    module_types: list[str] = field(default_factory=lambda: ["Linear", "LSTM", "GRU"])
    backend: str = "auto"  # torch.ao's quantized engine: x86, fbgemm, onednn, qnnpack or auto (the best here)
    skip: list[str] = field(default_factory=list)  # module-name globs left in float, e.g. decoder.output_layer
    only: list[str] = field(default_factory=list)  # module-name globs: quantize only these (empty: every one)
    per_channel: bool = False  # int8 only: a scale per output channel (more accurate, larger: float64+int64 per channel)

    def validate(self) -> None:
        check_parts(self.parts)
        unknown = sorted(set(self.module_types) - set(MODULE_TYPES))
        if unknown:
            raise ValueError(f"unknown module type(s) {unknown}; allowed: {sorted(MODULE_TYPES)}")


class DynamicInt8(Plugin):
    name = "dynamic-int8"
    description = "torch.ao dynamic quantization: qint8 weights for Linear (and LSTM/GRU) modules"
    Config = DynamicConfig
    effects = Effects(number_format=True)
    devices = ("cpu",)
    device_note = "torch.ao quantized kernels (fbgemm, onednn) are CPU-only; on a GPU use half-fp16 or half-bf16"
    dtype = torch.qint8

    def apply(self, bundle: ModelBundle) -> None:
        backend = select_backend(self.config.backend)
        types = tuple(MODULE_TYPES[t] for t in self.config.module_types)
        check_globs(bundle.model, self.name, skip=self.config.skip, only=self.config.only)
        names = [name for name, _ in named_targets(bundle.model, self.config.parts, types, self.config.skip,
                                                   self.config.only)]
        if self.dtype == torch.float16:
            qconfig = torch.ao.quantization.float16_dynamic_qconfig
        elif self.config.per_channel:
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        else:
            qconfig = torch.ao.quantization.default_dynamic_qconfig
        # In place, on the model Speech2Text holds: its beam searches keep seeing the same decoders.
        torch.ao.quantization.quantize_dynamic(bundle.model, {name: qconfig for name in names}, dtype=self.dtype,
                                               inplace=True)
        self.number_format = NumberFormat(str(self.dtype).replace("torch.", ""), backend)
        self.details.update(modules_quantized=len(names))
