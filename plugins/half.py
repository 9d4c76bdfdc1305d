"""Half precision: float16 or bfloat16 weights and activations, the GPU's number formats.

Every model part's weights (encoder, decoders, MD encoder, CTC heads; the frontend and feature
normalization stay float32) are stored in half precision, so the saved model is half the size, and
every translation runs under `torch.autocast(<device>, dtype)`, so matmuls and convolutions
compute in half precision while autocast keeps the ops that need range (normalizations, softmax,
log-softmax on CUDA) in float32. The encoders' outputs are handed to the beam searches in float32,
as ESPnet's searches size their score tensors by their input's dtype: hypotheses are ranked by
float32 sums of log-probabilities, not half-precision ones.

It runs on the CPU too (bfloat16 at 1.41x fp32's latency on the demo model here, `runner sweep
configs/half.yaml`; float16 stalls for minutes on some utterances: torch 2.11's float16 depthwise
`Conv1d` on the CPU, the conformer's convolution module, took over 100 s for 110 or 128 frames and a few
ms for 120 or 129, timed alone at 144 channels and kernel 15); the CPU's own
float16 scheme is `dynamic-fp16` and its bfloat16 one `bf16`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from runner.model import ModelBundle
from runner.plugin import MODEL_PARTS, Effects, NumberFormat, Plugin
from runner.quant.parts import part_prefixes

# Parts kept in float32 and outside autocast: a power spectrum (up to n_fft^2) overflows float16.
FLOAT32_PARTS = ("frontend", "normalize")
# Parts whose outputs a beam search reads as its `x` (encoder -> ASR search, MD encoder -> ST search).
SEARCH_INPUTS = ("encoder", "md_encoder")


@dataclass
class HalfConfig:
    pass  # autocast lowers every part's matmuls, so the whole model changes format together


def to_float32(value: Any) -> Any:
    """`value` with every floating tensor in it (nested in tuples and lists) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(to_float32(item) for item in value)
    return value


def _outside_autocast(module: torch.nn.Module, device_type: str) -> Any:
    """`module.forward` run with autocast off (ESPnet turns off only CUDA's around its frontend)."""
    method = type(module).forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return method(module, *args, **kwargs)

    return forward


def _float32_log_softmax(ctc: torch.nn.Module) -> Any:
    """The CTC head's `log_softmax` returning float32: CTC prefix scoring fills its tables with
    log(0) as -1e10, which float16 cannot hold."""
    method = type(ctc).log_softmax

    def log_softmax(hs_pad: torch.Tensor) -> torch.Tensor:
        return method(ctc, hs_pad).float()

    return log_softmax


class HalfFp16(Plugin):
    name = "half-fp16"
    description = "float16 weights and activations (autocast): the GPU's half precision (frontend in float32)"
    Config = HalfConfig
    effects = Effects(number_format=True)
    after = ("frontend",)
    dtype = torch.float16

    def number_format_parts(self) -> tuple[str, ...]:
        return MODEL_PARTS

    def apply(self, bundle: ModelBundle) -> None:
        model, converted = bundle.model, []
        for prefix in part_prefixes(model, list(MODEL_PARTS)):
            module = getattr(model, prefix)
            module.to(self.dtype)
            converted.append(prefix)
            if prefix in SEARCH_INPUTS:
                module.register_forward_hook(lambda _module, _args, output: to_float32(output))
            if hasattr(module, "log_softmax") and hasattr(module, "ctc_lo"):  # a CTC head, read by prefix scoring
                module.log_softmax = _float32_log_softmax(module)
        for name in FLOAT32_PARTS:
            module = getattr(model, name, None)
            if isinstance(module, torch.nn.Module):
                module.forward = _outside_autocast(module, bundle.device.type)
        self.number_format = NumberFormat(f"{str(self.dtype).replace('torch.', '')} (weights; autocast)")
        self.details.update(converted=converted)

    def translation_context(self, bundle: ModelBundle) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(bundle.device.type, dtype=self.dtype)


class HalfBf16(HalfFp16):
    name = "half-bf16"
    description = "bfloat16 weights and activations (autocast): float32's range in half the bytes (frontend in float32)"
    dtype = torch.bfloat16
