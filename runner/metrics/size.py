"""Model size and parameter count that stay honest after quantization."""

from __future__ import annotations

import io

import torch


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`, the figure the seed experiment reported as size."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _tensor_numel(value: object) -> int:
    if callable(value):
        value = value()
    return value.numel() if isinstance(value, torch.Tensor) else 0


def count_parameters(model: torch.nn.Module) -> int:
    """Every weight, packed quantized ones included.

    After quantize_dynamic or convert, `parameters()` no longer yields the packed weights
    (they live in `_packed_params`); quantized modules expose them through `weight()`/`bias()`.
    """
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        kind = type(module).__module__
        # torch.ao.nn.quantized.* and fused torch.ao.nn.intrinsic.quantized.* (LinearReLU, ...)
        if kind.startswith("torch.ao.nn.") and ".quantized" in kind and callable(getattr(module, "weight", None)):
            total += _tensor_numel(getattr(module, "weight", None))
            total += _tensor_numel(getattr(module, "bias", None))
    return total
