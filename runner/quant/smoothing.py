"""Per-channel rescaling between a pre-norm LayerNorm and the Linears that read it.

In a pre-norm Transformer layer (ESPnet's `normalize_before: true`) a LayerNorm's output is read
only by the Linears of the block after it: `norm1` by the self-attention's query/key/value
projections, a decoder's `norm2` by the source attention's query, the last norm by the
feed-forward block's `w_1`. Dividing channel j of the LayerNorm's weight and bias by s_j and
multiplying input column j of each of those Linears by s_j leaves the layer's float function
unchanged (up to rounding) while changing what an int8 kernel sees:

- `plant_outliers` makes a few channels S times larger (s_j = 1/S), as trained models' outlier
  features are: per-tensor int8 activations then lose their resolution;
- `smooth` takes SmoothQuant's s_j = max|X_j|^alpha / max|W_j|^(1-alpha), moving the activations'
  range into the weights, which int8 quantizes per output channel or tolerates better.

Post-norm layers (`normalize_before: false`) are left alone: there the LayerNorm's output is the
residual stream too, so no rescaling is free.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from runner.quant.parts import part_prefixes

QKV = ("self_attn.linear_q", "self_attn.linear_k", "self_attn.linear_v")
# (norm attribute, the Linears that alone read its output) in ESPnet's Transformer encoder and
# decoder layers (norm1..norm3) and Conformer encoder layers (norm_ff_macaron, norm_mha, norm_ff).
READERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("norm1", QKV),
    ("norm2", ("src_attn.linear_q",)),  # a decoder layer's; an encoder layer's norm2 has no src_attn
    ("norm2", ("feed_forward.w_1",)),
    ("norm3", ("feed_forward.w_1",)),
    ("norm_ff_macaron", ("feed_forward_macaron.w_1",)),
    ("norm_mha", QKV),
    ("norm_ff", ("feed_forward.w_1",)),
)


def _pre_norm_layer(layer: torch.nn.Module) -> bool:
    """A pre-norm layer whose norms feed only their block (`concat_after` reads the norm's output too)."""
    return (getattr(layer, "normalize_before", False) is True and not getattr(layer, "concat_after", False)
            and hasattr(layer, "feed_forward"))


@dataclass
class NormGroup:
    """A LayerNorm and the Linears that alone read its output."""

    norm_name: str
    norm: torch.nn.LayerNorm
    reader_names: list[str]
    readers: list[torch.nn.Linear]


def norm_groups(model: torch.nn.Module, parts: Sequence[str]) -> Iterator[NormGroup]:
    """Every pre-norm LayerNorm of `parts` whose readers are all plain Linears, by full module name.

    Args:
        model: the ESPnet model (e.g. `ModelBundle.model`).
        parts: model parts (`runner.plugin.MODEL_PARTS`) to look in.

    Yields:
        One `NormGroup` per LayerNorm, in module order. Layers of other classes, post-norm layers,
        and layers whose readers are not Linears (already quantized, say) are skipped.
    """
    prefixes = part_prefixes(model, list(parts))
    for name, layer in model.named_modules():
        if not _pre_norm_layer(layer) or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        for norm_attribute, paths in READERS:
            norm = getattr(layer, norm_attribute, None)
            readers = [_get(layer, path) for path in paths]
            if not isinstance(norm, torch.nn.LayerNorm) or norm.weight is None or norm.bias is None:
                continue
            if norm_attribute == "norm2" and hasattr(layer, "src_attn") != (paths[0] == "src_attn.linear_q"):
                continue  # a decoder layer's norm2 feeds the source attention, an encoder layer's the feed-forward
            if all(type(r) is torch.nn.Linear for r in readers):
                yield NormGroup(f"{name}.{norm_attribute}", norm, [f"{name}.{p}" for p in paths], readers)


def _get(module: torch.nn.Module, path: str) -> torch.nn.Module | None:
    for attribute in path.split("."):
        module = getattr(module, attribute, None)
        if module is None:
            return None
    return module


@torch.no_grad()
def rescale(group: NormGroup, factors: torch.Tensor) -> None:
    """Divide the norm's output channel j by `factors[j]` and multiply the readers' input column j by it."""
    factors = factors.to(group.norm.weight.dtype)
    group.norm.weight.div_(factors)
    group.norm.bias.div_(factors)
    for reader in group.readers:
        reader.weight.mul_(factors)


def plant_outliers(model: torch.nn.Module, parts: Sequence[str], scale: float, channels: int,
                   seed: int = 0) -> dict[str, list[int]]:
    """Make `channels` random output channels of every pre-norm LayerNorm in `parts` `scale` times larger.

    The float function is unchanged (the readers' columns are divided by `scale`); int8 activations
    of those Linears then carry outliers as trained models' do.

    Args:
        model: the ESPnet model, changed in place.
        parts: model parts to plant in.
        scale: how much larger the chosen channels become (> 1).
        channels: how many channels per LayerNorm.
        seed: the random channel choice's seed.

    Returns:
        LayerNorm name -> the channels made larger.
    """
    generator = torch.Generator().manual_seed(seed)
    planted = {}
    for group in norm_groups(model, parts):
        size = group.norm.weight.numel()
        chosen = torch.randperm(size, generator=generator)[:min(channels, size)].sort().values
        factors = torch.ones(size)
        factors[chosen] = 1.0 / scale
        rescale(group, factors)
        planted[group.norm_name] = chosen.tolist()
    return planted


def smooth_factors(activation_max: torch.Tensor, group: NormGroup, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel factors s_j = max|X_j|^alpha / max|W_j|^(1-alpha), over every reader.

    Channels whose activation or weight maximum is zero keep factor 1.
    """
    weight_max = torch.stack([r.weight.detach().abs().amax(dim=0) for r in group.readers]).amax(dim=0)
    activation_max = activation_max.to(weight_max.dtype)
    factors = activation_max.pow(alpha) / weight_max.pow(1 - alpha)
    usable = (activation_max > 0) & (weight_max > 0) & torch.isfinite(factors)
    return torch.where(usable, factors.clamp(min=1e-5), torch.ones_like(factors))


class ActivationMax:
    """Per-channel max |output| of LayerNorms, recorded by forward hooks while the block runs."""

    def __init__(self, groups: Sequence[NormGroup]) -> None:
        self.groups = list(groups)
        self.maxima: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> ActivationMax:
        for group in self.groups:
            self._handles.append(group.norm.register_forward_hook(self._hook(group.norm_name)))
        return self

    def _hook(self, name: str):  # noqa: ANN202 - a torch hook
        def record(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            current = output.detach().abs().reshape(-1, output.shape[-1]).amax(dim=0).float()
            previous = self.maxima.get(name)
            self.maxima[name] = current if previous is None else torch.maximum(previous, current)
        return record

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
