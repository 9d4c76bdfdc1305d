"""The operators the lean decoder step calls in place of modules, where that is the same computation.

`direct(module)` resolves a module once per utterance to the one operator its forward runs (a float
Linear through MKL's packed GEMM, a LayerNorm, a dynamically or statically quantized Linear, a static
int8 region); `fused_projection` gives a self-attention's query/key/value as one product. While
several utterances share a step, `ROW_GROUPS` holds each one's rows, so dynamically quantized
products are taken per utterance (`per_utterance`), and `PACK_ROWS` the row count float weights are
packed for.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.ao.nn.intrinsic.quantized import LinearReLU as QuantizedLinearReLU
from torch.ao.nn.quantized import DeQuantize, Quantize
from torch.ao.nn.quantized import Linear as QuantizedLinear
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import QuantWrapper


def _kernel(overload: Any) -> Any:
    """The C++ operator behind an overload: its Python `__call__` checks every argument for the fake
    script objects of tracing (packed weights are script objects), some µs per call in eager decoding."""
    return getattr(overload, "_op", overload)


LINEAR_DYNAMIC = _kernel(torch.ops.quantized.linear_dynamic.default)
LINEAR_RELU_DYNAMIC = _kernel(torch.ops.quantized.linear_relu_dynamic.default)
LINEAR_DYNAMIC_FP16 = _kernel(torch.ops.quantized.linear_dynamic_fp16.default)
# MKL's prepacked sgemm, where this PyTorch build has it.
_MKL = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
MKL_LINEAR = _kernel(torch.ops.mkl._mkl_linear.default) if _MKL else None
MKL_REORDER = torch.ops.mkl._mkl_reorder_linear_weight if _MKL else None
MKL_PACKS_KEPT = 6  # packed copies of a weight kept, one per row count (beam x batch rounded up to 1, 2, 4, ... 32)
PACK_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar("lean_pack_rows", default=None)
QLINEAR = _kernel(torch.ops.quantized.linear.default)
# Rows per utterance while several utterances are searched together (see `per_utterance`).
ROW_GROUPS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("lean_row_groups", default=None)


def per_utterance(op: Callable[..., torch.Tensor], *arguments: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """`op(x, *arguments)`, called once per utterance's rows when several utterances share the step.

    For dynamically quantized products, whose activation scale comes from the whole input: an
    utterance's rows are then quantized exactly as they are when it is searched alone.
    """
    def call(x: torch.Tensor) -> torch.Tensor:
        groups = ROW_GROUPS.get()
        if groups is None or x.dim() != 2 or x.size(0) != sum(groups):
            return op(x, *arguments)
        return torch.cat([op(part, *arguments) for part in x.split(groups)])

    return call
QLINEAR_RELU = _kernel(torch.ops.quantized.linear_relu.default)


def direct(module: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The module's computation without `Module.__call__`'s bookkeeping, where that is the same computation.

    A module without hooks becomes the one operator its forward runs: a plain `Linear` (MKL's packed
    GEMM where `_float_linear` can), a last-dimension `LayerNorm`, a dynamically quantized Linear, a
    statically quantized Linear/LinearReLU, or a static int8 region (QuantWrapper) around one of these
    or a feed-forward block. `Identity` becomes None (skipped). Anything else (observed during
    calibration, hooked, a third party's module) is returned as the module, so whatever a plugin made
    of it runs.
    """
    if module._forward_hooks or module._forward_pre_hooks:
        return module
    if type(module) is torch.nn.Identity:
        return None
    if type(module) is torch.nn.Linear:
        return _float_linear(module, module.weight, module.bias)
    if type(module) is DynamicLinear:  # the quantized op its forward calls, without the module around it
        packed = module._packed_params._packed_params
        if module._packed_params.dtype == torch.float16:
            return lambda x: LINEAR_DYNAMIC_FP16(x, packed)
        if module._packed_params.dtype == torch.qint8:
            reduce_range = (module.version or 0) >= 4
            return per_utterance(LINEAR_DYNAMIC, packed, reduce_range)
    if type(module) in (QuantizedLinear, QuantizedLinearReLU):  # static int8: quantized in, quantized out
        op = QLINEAR if type(module) is QuantizedLinear else QLINEAR_RELU
        packed, scale, zero_point = module._packed_params._packed_params, float(module.scale), int(module.zero_point)
        return lambda x: op(x, packed, scale, zero_point)
    if type(module) is QuantWrapper and type(module.quant) is Quantize and type(module.dequant) is DeQuantize:
        inner = feed_forward(module.module) if type(module.module).__name__ == "PositionwiseFeedForward" \
            else direct(module.module)
        if inner is None or inner is module.module:
            return module
        scale, zero_point, dtype = float(module.quant.scale), int(module.quant.zero_point), module.quant.dtype
        return lambda x: inner(torch.quantize_per_tensor(x, scale, zero_point, dtype)).dequantize()
    if isinstance(module, torch.nn.LayerNorm) and type(module).forward in (torch.nn.LayerNorm.forward, _espnet_norm()) \
            and getattr(module, "dim", -1) == -1:
        shape, weight, bias, eps = module.normalized_shape, module.weight, module.bias, module.eps
        return lambda x: F.layer_norm(x, shape, weight, bias, eps)
    return module


def _espnet_norm() -> Any:
    from espnet.nets.pytorch_backend.transformer.layer_norm import LayerNorm

    return LayerNorm.forward


def feed_forward(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """ESPnet's PositionwiseFeedForward (w_2(activation(w_1(x))), dropout off in eval) as direct calls."""
    from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import PositionwiseFeedForward

    if type(module) is QuantWrapper:  # static int8 with `granularity: block`: one quantized region
        return direct(module)
    if type(module) is not PositionwiseFeedForward or module._forward_hooks or module._forward_pre_hooks:
        return module
    first, second, activation = direct(module.w_1), direct(module.w_2), module.activation
    if first is None or second is None:
        return module
    if type(activation) is torch.nn.Identity:  # static int8 fused the ReLU into w_1
        return lambda x: second(first(x))
    relu = type(activation) is torch.nn.ReLU and not activation._forward_hooks
    if not relu:
        return lambda x: second(activation(first(x)))
    w_1 = module.w_1
    if type(w_1) is DynamicLinear and w_1._packed_params.dtype == torch.qint8 and not w_1._forward_hooks:
        # fbgemm applies the ReLU to the dequantized output in the same call: the same numbers
        packed, reduce_range = w_1._packed_params._packed_params, (w_1.version or 0) >= 4
        relu_first = per_utterance(LINEAR_RELU_DYNAMIC, packed, reduce_range)
        return lambda x: second(relu_first(x))
    return lambda x: second(F.relu(first(x)))


def fused_projection(attention: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """One (d -> 3d) product for the query, key and value of a self-attention, where that is the same arithmetic.

    Three plain float Linears share one concatenated weight. Three dynamically quantized Linears
    (the `dynamic-int8`/`dynamic-fp16` plugins) share one packed weight: their activation is the
    same tensor, so it is quantized the same way once, and per-tensor weight scales become the
    per-channel scales of their rows, which gives the three products bit for bit. The fused
    weight is kept on the attention module and rebuilt when a projection changes.
    """
    linears = (attention.linear_q, attention.linear_k, attention.linear_v)
    if type(attention.q_norm) is not torch.nn.Identity or type(attention.k_norm) is not torch.nn.Identity:
        return None
    if any(linear._forward_hooks or linear._forward_pre_hooks for linear in linears):
        return None
    kinds = {type(linear) for linear in linears}
    if kinds == {torch.nn.Linear}:
        if any(linear.bias is None for linear in linears):
            return None
        key: Any = tuple((linear.weight.data_ptr(), linear.weight._version, linear.bias._version) for linear in linears)
        build = _float_qkv
    elif kinds == {DynamicLinear} and len({(linear._packed_params.dtype, linear.version) for linear in linears}) == 1:
        key = tuple(id(linear._packed_params._packed_params) for linear in linears)
        build = _dynamic_qkv
    else:
        return None
    packing = (PACK_ROWS.get(), torch.is_autocast_enabled("cpu"))  # how a float weight is packed
    fused = attention.__dict__.setdefault("runner_lean_qkv", {})
    cached = fused.get(packing)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, build(linears))
        if len(fused) >= MKL_PACKS_KEPT:
            fused.pop(next(iter(fused)))
        fused[packing] = cached
    return cached[1]


def _float_qkv(linears: tuple[Any, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears])
    return _float_linear(None, weight, bias)


def _float_linear(owner: torch.nn.Module | None, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """x W^T + b: with the weight prepacked for MKL's GEMM at the beam's row count where that is available.

    MKL's packed GEMM (what Inductor's freezing uses on CPU) is 1.3-1.6x faster than `F.linear` for
    4-10 rows here, and a row's result does not depend on how many rows share the call (checked in
    tests/test_batch.py), which keeps a batched utterance's numbers its own. Not under autocast (the bf16 plugin
    lowers `F.linear` itself), not for other dtypes, not on a GPU (cuBLAS runs `F.linear` there).
    A weight packed for `owner` is kept on it until the weight changes.
    """
    rows = PACK_ROWS.get()
    if (rows is None or MKL_LINEAR is None or weight.dtype != torch.float32 or weight.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")):
        return lambda x: F.linear(x, weight, bias)
    key = (weight.data_ptr(), weight._version) if owner is not None else None
    packs = owner.__dict__.setdefault("runner_lean_mkl", {}) if owner is not None else {}
    cached = packs.get(rows)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, MKL_REORDER(weight.detach(), rows))
        if len(packs) >= MKL_PACKS_KEPT:  # a server's batch sizes vary: keep the latest few row counts
            packs.pop(next(iter(packs)))
        packs[rows] = cached
    packed = cached[1]

    def linear(x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        if n >= rows or x.dim() != 2:
            return MKL_LINEAR(x, packed, weight, bias, rows)
        # Fewer rows than packed for (hypotheses ended): zero rows fill the packed shape, because MKL's
        # packed GEMM gives a row the same bits at any packed row count, and its unpacked GEMM does not.
        return MKL_LINEAR(torch.cat((x, x.new_zeros(rows - n, x.size(1)))), packed, weight, bias, rows)[:n]

    return linear


def _dynamic_qkv(linears: tuple[Any, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    weights, biases = zip(*[linear._packed_params._weight_bias() for linear in linears])
    bias = None if any(b is None for b in biases) else torch.cat(biases)
    if linears[0]._packed_params.dtype == torch.float16:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.cat(weights), bias)
        return lambda x: LINEAR_DYNAMIC_FP16(x, packed)
    rows = []
    for weight in weights:
        if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            count = weight.size(0)
            rows.append((weight.int_repr(), torch.full((count,), weight.q_scale(), dtype=torch.double),
                         torch.full((count,), weight.q_zero_point(), dtype=torch.long)))
        else:
            rows.append((weight.int_repr(), weight.q_per_channel_scales(), weight.q_per_channel_zero_points()))
    fused = torch._make_per_channel_quantized_tensor(torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]),
                                                     torch.cat([r[2] for r in rows]), 0)
    packed = torch.ops.quantized.linear_prepack(fused, bias)
    reduce_range = (linears[0].version or 0) >= 4  # as the module's forward decides
    return per_utterance(LINEAR_DYNAMIC, packed, reduce_range)
