"""Static int8 post-training quantization that runs inside ESPnet's beam search.

ESPnet's searches call the decoder's `forward_one_step`/`batch_score`, never `forward`, so
stubs around the whole decoder never see data, and stubs around attention fail on `bmm`.
Instead every quantizable computation is wrapped where it is called: each Linear (attention
projections, output layer, CTC head) in a QuantWrapper (QuantStub -> module -> DeQuantStub),
and with `granularity: block` each ReLU feed-forward block as one quantized region (Linear+ReLU
fused, one quantize/dequantize pair per block instead of two). Observers are calibrated with
full beam searches over utterances disjoint from the test set, then converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.ao.quantization import (
    HistogramObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    QuantWrapper,
)

from runner.data import Utterance
from runner.model import ModelBundle
from runner.quant.observers import EntropyObserver, PercentileObserver
from runner.pipeline import translate
from runner.plugin import CalibrationConfig, Effects, NumberFormat, Plugin
from runner.quant.parts import check_globs, check_parts, count_types, named_targets, select_backend, set_submodule


@dataclass
class StaticConfig(CalibrationConfig):
    parts: list[str] = field(default_factory=lambda: ["decoder"])
    granularity: Literal["linear", "block"] = "linear"
    observer: Literal["minmax", "histogram", "percentile", "entropy"] = "histogram"
    percentile: float = 99.99  # observer percentile: the share of activation values kept inside the range
    per_channel: bool = True
    backend: str = "auto"  # torch.ao's quantized engine, as dynamic-int8's
    skip: list[str] = field(default_factory=list)  # module-name globs left in float
    only: list[str] = field(default_factory=list)  # module-name globs: quantize only these (empty: every one)

    def validate(self) -> None:
        check_parts(self.parts)
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be within 50..100, got {self.percentile}")
        super().validate()


def _is_relu_feed_forward(module: torch.nn.Module) -> bool:
    return (type(module).__name__ == "PositionwiseFeedForward" and isinstance(getattr(module, "w_1", None), torch.nn.Linear)
            and isinstance(getattr(module, "activation", None), torch.nn.ReLU))


class StaticInt8(Plugin):
    name = "static-int8"
    description = "Static PTQ (QuantStub/DeQuantStub) of the ST decoder, calibrated with beam searches on dev"
    Config = StaticConfig
    effects = Effects(number_format=True)
    devices = ("cpu",)
    device_note = "torch.ao quantized kernels (fbgemm, onednn) are CPU-only; on a GPU use half-fp16 or half-bf16"

    def qconfig(self) -> QConfig:
        reduce_range = torch.backends.quantized.engine in ("x86", "fbgemm")
        observer, extra = {"minmax": (MinMaxObserver, {}), "histogram": (HistogramObserver, {}),
                           "percentile": (PercentileObserver, {"percentile": self.config.percentile}),
                           "entropy": (EntropyObserver, {})}[self.config.observer]
        activation = observer.with_args(dtype=torch.quint8, reduce_range=reduce_range, **extra)
        weight = (PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
                  if self.config.per_channel else
                  MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
        return QConfig(activation=activation, weight=weight)

    def apply(self, bundle: ModelBundle) -> None:
        backend = select_backend(self.config.backend)
        model, qconfig = bundle.model, self.qconfig()
        check_globs(model, self.name, skip=self.config.skip, only=self.config.only)
        blocks: list[str] = []
        if self.config.granularity == "block":
            for name, module in list(named_targets(model, self.config.parts, (torch.nn.Module,), self.config.skip,
                                                       self.config.only)):
                if _is_relu_feed_forward(module) and not any(name.startswith(b + ".") for b in blocks):
                    torch.ao.quantization.fuse_modules(module, [["w_1", "activation"]], inplace=True)
                    blocks.append(name)
        wrapped = 0
        for name in blocks:
            wrapper = QuantWrapper(model.get_submodule(name))
            wrapper.qconfig = qconfig  # on the wrapper only: the decoder's Embedding refuses it
            set_submodule(model, name, wrapper)
            wrapped += 1
        linears = [name for name, _ in named_targets(model, self.config.parts, (torch.nn.Linear,), self.config.skip,
                                                     self.config.only)
                   if not any(name.startswith(b + ".") for b in blocks)]
        for name in linears:
            wrapper = QuantWrapper(model.get_submodule(name))
            wrapper.qconfig = qconfig
            set_submodule(model, name, wrapper)
            wrapped += 1
        torch.ao.quantization.prepare(model, inplace=True)
        bundle.rewire_searches()
        self.number_format = NumberFormat("qint8", backend)
        self.details.update(regions=wrapped, feed_forward_blocks=len(blocks))

    def calibrate(self, bundle: ModelBundle, utterances: list[Utterance]) -> None:
        for utterance in utterances:
            translate(bundle.speech2text, utterance.waveform)  # full ASR + ST beam searches: observers see real steps
        torch.ao.quantization.convert(bundle.model, inplace=True)
        bundle.rewire_searches()
        self.details.update(quantized_modules=count_types(bundle.model))
