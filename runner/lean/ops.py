"""The operators the lean decoder step calls in place of modules, where that is the same computation.

`direct(module)` resolves a module once per utterance to the one operator its forward runs (a float
Linear through MKL's packed GEMM, a LayerNorm, a dynamically or statically quantized Linear, a static
int8 region); `fused_projection` gives a self-attention's query/key/value as one product.

While several utterances share a step, `ROW_GROUPS` holds each one's rows and `PACKING` the rows per
utterance and per batch. A product whose result for a row could depend on the call's other rows is
taken once per utterance (`per_utterance`), on exactly the rows and padding it gets alone: dynamically
quantized products always (their activation scale comes from the whole input), float products unless
`rows_independent` has shown, on this CPU and for this shape, that one call for the whole batch gives
every row the bits it gets alone. Whether a kernel has that property depends on the CPU (MKL's packed
GEMM has it for these shapes on an Intel Xeon with AMX, not on an AMD EPYC), so it is checked, not assumed.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Packing:
    """The row counts a step's float products are packed for: one utterance's beam, and the whole batch's."""

    rows: int
    batch_rows: int


PACKING: contextvars.ContextVar[Packing | None] = contextvars.ContextVar("lean_packing", default=None)
QLINEAR = _kernel(torch.ops.quantized.linear.default)
# Rows per utterance while several utterances are searched together (see `per_utterance`).
ROW_GROUPS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("lean_row_groups", default=None)


def per_utterance(op: Callable[..., torch.Tensor], *arguments: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """`op(x, *arguments)`, called once per utterance's rows when several utterances share the step.

    Each utterance's rows then go through the call they get when it is searched alone: for
    dynamically quantized products, whose activation scale comes from the whole input, and for
    any product whose kernel is not shown to be independent of the other rows.
    """
    def call(x: torch.Tensor) -> torch.Tensor:
        groups = ROW_GROUPS.get()
        if groups is None or x.dim() != 2 or x.size(0) != sum(groups):
            return op(x, *arguments)
        # A part that starts off a 64-byte boundary is copied to one, as an utterance's own tensor is
        # (MKL's results may depend on the alignment of its input).
        return torch.cat([op(part if part.data_ptr() % 64 == 0 else part.clone(), *arguments)
                          for part in x.split(groups)])

    return call


# Verdicts of `rows_independent`, by (kernel, weight shape, row counts, threads): a kernel's reduction
# order is a function of the call's shape and thread count, not of the numbers in it.
_INDEPENDENT: dict[tuple[Any, ...], bool] = {}


def rows_independent(alone: Callable[[torch.Tensor], torch.Tensor], batched: Callable[[torch.Tensor], torch.Tensor],
                     in_features: int, rows: int, batch_rows: int, kernel: tuple[Any, ...] = ()) -> bool:
    """Whether `batched` gives every row, at any of its `batch_rows` positions, the bits `alone` gives it.

    `alone` takes `rows` rows (one utterance's beam), `batched` takes `batch_rows` (a multiple of
    `rows`). One random probe goes through `batched` once, and through `alone` in chunks, shifted
    `rows` times so that every row is seen at every position of the one-utterance call: equal bits
    everywhere mean each output row is one function of its input row, wherever it sits. Differences
    come from the kernel's reduction order, which random numbers reveal.

    Args:
        alone: the product as one utterance's search calls it.
        batched: the product as one call for the whole batch.
        in_features: the product's input width.
        rows: rows of one utterance's call; batch_rows: rows of the batch's call.
        kernel: when given, a key (kernel, shape) under which the verdict is remembered for this thread count.

    Returns:
        True when every row's bits agree, so the batch may share one call.
    """
    key = (*kernel, rows, batch_rows, torch.get_num_threads()) if kernel else None
    if key is not None and key in _INDEPENDENT:
        return _INDEPENDENT[key]
    generator = torch.Generator().manual_seed(batch_rows)
    probe = torch.randn(batch_rows, in_features, generator=generator)
    with torch.no_grad():
        together = batched(probe)
        verdict = all(torch.equal(alone(chunk), expected)
                      for shift in range(rows)
                      for chunk, expected in zip(probe.roll(shift, 0).split(rows), together.roll(shift, 0).split(rows)))
    if key is not None:
        _INDEPENDENT[key] = verdict
    return verdict


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
        if module._packed_params.dtype == torch.float16:  # fbgemm's fp16 kernels are chosen by row count
            return per_utterance(LINEAR_DYNAMIC_FP16, packed)
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
        key: Any = tuple((linear.weight.data_ptr(), linear.weight._version,
                          None if linear.bias is None else linear.bias._version) for linear in linears)
        build = _float_qkv
    elif kinds == {DynamicLinear} and len({(linear._packed_params.dtype, linear.version) for linear in linears}) == 1:
        key = tuple(id(linear._packed_params._packed_params) for linear in linears)
        build = _dynamic_qkv
    else:
        return None
    packing = (PACKING.get(), torch.is_autocast_enabled("cpu"))  # how a float weight is packed
    fused = attention.__dict__.setdefault("runner_lean_qkv", {})
    cached = fused.get(packing)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, build(linears))
        if len(fused) >= MKL_PACKS_KEPT:
            fused.pop(next(iter(fused)))
        fused[packing] = cached
    return cached[1]


def _biases(biases: list[torch.Tensor | None], linears: tuple[Any, ...]) -> torch.Tensor | None:
    """The projections' biases in one, a projection without one (Whisper's key) as zeros (x + 0 is x)."""
    if all(bias is None for bias in biases):
        return None
    present = next(bias for bias in biases if bias is not None)
    return torch.cat([bias if bias is not None else present.new_zeros(linear.out_features)
                      for bias, linear in zip(biases, linears)])


def _float_qkv(linears: tuple[Any, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    weight = torch.cat([linear.weight for linear in linears])
    return _float_linear(None, weight, _biases([linear.bias for linear in linears], linears))


def _float_linear(owner: torch.nn.Module | None, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """x W^T + b: with the weight prepacked for MKL's GEMM at the beam's row count where that is available.

    MKL's packed GEMM (what Inductor's freezing uses on CPU) is 1.3-1.6x faster than `F.linear` for
    4-10 rows here. Not under autocast (the bf16 plugin lowers `F.linear` itself), not for other
    dtypes, not on a GPU (cuBLAS runs `F.linear` there). While several utterances share the step,
    the batch shares one call only where `rows_independent` showed that call gives each row the
    bits of the utterance's own call; otherwise each utterance's rows are its own call (on the CPU;
    on a GPU the batch shares cuBLAS's call, whose last bits may depend on the batch).
    A weight packed for `owner` is kept on it until the weight changes.
    """
    packing = PACKING.get()
    if (packing is None or MKL_LINEAR is None or weight.dtype != torch.float32 or weight.device.type != "cpu"
            or torch.is_autocast_enabled("cpu")):
        def plain(x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, weight, bias)

        return per_utterance(plain) if weight.device.type == "cpu" else plain
    alone = _mkl_product(owner, weight, bias, packing.rows)
    if packing.batch_rows == packing.rows:
        return alone
    together = _mkl_product(owner, weight, bias, packing.batch_rows)
    if rows_independent(alone, together, weight.size(1), packing.rows, packing.batch_rows,
                        kernel=("mkl", *weight.shape, bias is None)):
        return together
    return per_utterance(alone)


def _mkl_product(owner: torch.nn.Module | None, weight: torch.Tensor, bias: torch.Tensor | None,
                 rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x W^T + b through MKL's GEMM with the weight packed for `rows` rows; fewer rows are padded with zeros."""
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
        # Fewer rows than packed for (hypotheses ended): zero rows fill the packed shape, so every call
        # of a search is the same kernel (MKL's unpacked GEMM, for other row counts, rounds differently).
        return MKL_LINEAR(torch.cat((x, x.new_zeros(rows - n, x.size(1)))), packed, weight, bias, rows)[:n]

    return linear


def _dynamic_qkv(linears: tuple[Any, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    weights, biases = zip(*[linear._packed_params._weight_bias() for linear in linears])
    bias = _biases(list(biases), linears)
    if linears[0]._packed_params.dtype == torch.float16:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.cat(weights), bias)
        return per_utterance(LINEAR_DYNAMIC_FP16, packed)
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
