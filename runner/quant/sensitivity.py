"""Which modules int8 breaks: each Linear quantized alone, scored on the inputs real beam searches give it.

`module_sensitivity` runs full fp32 beam searches over calibration utterances with a hook on every
quantizable Linear that keeps (a thinned sample of) the inputs of its calls, then quantizes each
Linear alone as the scheme would and scores its output against fp32 on exactly those calls:

    SQNR (dB) = 10 log10( sum y_fp32^2 / sum (y_fp32 - y_int8)^2 )

`dynamic-int8` runs torch.ao's dynamic quantized Linear on each call (its activation scale is
per call, as when decoding); `static-int8` observes all the kept inputs with the plugin's observer
and fake-quantizes activations per tensor and weights per output channel, as its convert does.
This is numeric-suite style and cheap: no decode per module. `rollup` groups modules by layer and
by model part; the BLEU effect of the worst groups is measured separately by decoding
(`runner.quant.tuning.bleu_effects`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runner.data import Utterance
from runner.pipeline import translate
from runner.model import ModelBundle
from runner.plugin import MODEL_PARTS
from runner.quant.parts import PART_ATTRIBUTES, named_targets

SCHEMES = ("dynamic-int8", "static-int8")  # the int8 plugins sensitivity and tuning quantize with
MAX_CALLS = 256  # calls kept per module: beyond this every other kept call is dropped (and later ones thinned)


@dataclass(frozen=True)
class ModuleScore:
    """One Linear quantized alone.

    Attributes:
        name: the module's full name (e.g. decoder.decoders.0.self_attn.linear_q).
        part: its model part (encoder, extra_asr_decoder, md_encoder, decoder, ctc).
        layer: the layer it belongs to (its name up to the layer index), or its own name outside layers.
        sqnr_db: signal-to-quantization-noise ratio of its output over the kept calls (higher: safer).
        calls: calls scored; rows: input rows scored.
    """

    name: str
    part: str
    layer: str
    sqnr_db: float
    calls: int
    rows: int


@dataclass(frozen=True)
class GroupScore:
    """A layer or a model part: its modules' SQNR (the worst and the mean)."""

    name: str
    kind: str  # "layer" or "part"
    modules: tuple[str, ...]
    sqnr_min_db: float
    sqnr_mean_db: float


def part_of(name: str) -> str:
    """The model part a module name lies in (the ESPnet attribute it starts with, CTC heads as 'ctc')."""
    head = name.split(".", 1)[0]
    return next((part for part, attributes in PART_ATTRIBUTES.items() if head in attributes), head)


def layer_of(name: str) -> str:
    """The module's layer: its name up to the first numeric component (decoder.decoders.0), else itself."""
    pieces = name.split(".")
    for index, piece in enumerate(pieces):
        if piece.isdigit():
            return ".".join(pieces[:index + 1])
    return name


class CallRecorder:
    """Forward pre-hooks keeping each Linear's call inputs, thinned to at most MAX_CALLS per module."""

    def __init__(self, modules: dict[str, torch.nn.Linear]) -> None:
        self.modules = modules
        self.calls: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        self._seen = dict.fromkeys(modules, 0)
        self._stride = dict.fromkeys(modules, 1)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> CallRecorder:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Callable[..., None]:
        def keep(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen = self._seen[name]
            self._seen[name] = seen + 1
            if seen % self._stride[name]:
                return
            kept = self.calls[name]
            kept.append(inputs[0].detach().reshape(-1, inputs[0].shape[-1]).clone())
            if len(kept) >= MAX_CALLS:  # keep every other call from now on, so the sample spans every step
                self.calls[name] = kept[::2]
                self._stride[name] *= 2
        return keep

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def quantizable(bundle: ModelBundle, parts: Sequence[str] = MODEL_PARTS) -> dict[str, torch.nn.Linear]:
    """Every plain float Linear of `parts`, by full name (what the int8 plugins would quantize)."""
    return {name: module for name, module in named_targets(bundle.model, list(parts), (torch.nn.Linear,), [])
            if type(module) is torch.nn.Linear}


def left_in_float(bundle: ModelBundle, parts: Sequence[str] = MODEL_PARTS) -> dict[str, int]:
    """Module types with weight matrices in `parts` that the int8 plugins do not quantize (Conv1d, Embedding, ...),
    counted (normalization layers are not counted: no int8 scheme here would change them)."""
    counts: dict[str, int] = {}
    for _, module in named_targets(bundle.model, list(parts), (torch.nn.Module,), []):
        norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._NormBase))
        if isinstance(getattr(module, "weight", None), torch.nn.Parameter) and type(module) is not torch.nn.Linear \
                and not norm:
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """10 log10 of signal power over error power (inf when they are equal)."""
    noise = float((reference - approximation).double().pow(2).sum())
    signal = float(reference.double().pow(2).sum())
    if noise == 0:
        return float("inf")
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def _dynamic(module: torch.nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    float_module = copy.deepcopy(module)
    float_module.qconfig = torch.ao.quantization.default_dynamic_qconfig
    quantized = torch.ao.nn.quantized.dynamic.Linear.from_float(float_module)
    return quantized


def _static(module: torch.nn.Linear, calls: list[torch.Tensor],
            observer: Callable[[], torch.ao.quantization.ObserverBase]) -> Callable[[torch.Tensor], torch.Tensor]:
    activation = observer()
    for x in calls:
        activation(x)
    scale, zero = activation.calculate_qparams()
    weights = torch.ao.quantization.PerChannelMinMaxObserver(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    weights(module.weight.detach())
    w_scale, w_zero = weights.calculate_qparams()
    weight = torch.fake_quantize_per_channel_affine(module.weight.detach(), w_scale, w_zero.to(torch.int32), 0, -128, 127)
    low, high = activation.quant_min, activation.quant_max

    def run(x: torch.Tensor) -> torch.Tensor:
        xq = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), low, high)
        return torch.nn.functional.linear(xq, weight, module.bias)
    return run


def static_observer(options: dict[str, Any] | None = None) -> Callable[[], torch.ao.quantization.ObserverBase]:
    """The activation observer factory the static-int8 plugin builds from `options` (observer, percentile, ...).

    Raises:
        RunnerError: an option the plugin refuses, in its own one-line words.
    """
    from runner.plugin import PluginSpec
    from runner.plugin_set import build

    return build(PluginSpec("static-int8", dict(options or {}))).qconfig().activation


def module_sensitivity(bundle: ModelBundle, utterances: Iterable[Utterance], scheme: str,
                       observer: Callable[[], torch.ao.quantization.ObserverBase] | None = None,
                       parts: Sequence[str] = MODEL_PARTS,
                       progress: Callable[[Iterable], Iterable] | None = None) -> list[ModuleScore]:
    """Every quantizable Linear of the float model in `bundle`, quantized alone, worst first.

    Args:
        bundle: a float model (not yet changed by an int8 plugin).
        utterances: calibration utterances, decoded with full beam searches (dev, never test).
        scheme: "dynamic-int8" or "static-int8".
        observer: static-int8's activation observer factory (default: torch.ao's HistogramObserver).
        parts: model parts to look in.
        progress: wraps the utterance and module loops (a progress bar), or None.

    Returns:
        One `ModuleScore` per Linear that was called, lowest SQNR first.

    Raises:
        ValueError: an unknown scheme.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; sensitivity knows {list(SCHEMES)}")
    wrap = progress or (lambda items: items)
    modules = quantizable(bundle, parts)
    with torch.no_grad(), CallRecorder(modules) as recorder:
        for utterance in wrap(list(utterances)):
            translate(bundle.speech2text, utterance.waveform)
    make = observer or (lambda: torch.ao.quantization.HistogramObserver(dtype=torch.quint8, reduce_range=True))
    scores = []
    with torch.no_grad():
        for name in wrap(list(modules)):
            calls = recorder.calls[name]
            if not calls:
                continue  # never reached by a search (e.g. a training-only head)
            module = modules[name]
            quantized = _dynamic(module) if scheme == "dynamic-int8" else _static(module, calls, make)
            reference = torch.cat([module(x) for x in calls])
            approximation = torch.cat([quantized(x) for x in calls])
            scores.append(ModuleScore(name, part_of(name), layer_of(name), sqnr_db(reference, approximation),
                                      len(calls), sum(len(x) for x in calls)))
    return sorted(scores, key=lambda s: s.sqnr_db)


def rollup(scores: Sequence[ModuleScore]) -> list[GroupScore]:
    """Layers and model parts with their modules' worst and mean SQNR, worst first (layers, then parts)."""
    groups = []
    for kind, key in (("layer", lambda s: s.layer), ("part", lambda s: s.part)):
        members: dict[str, list[ModuleScore]] = {}
        for score in scores:
            members.setdefault(key(score), []).append(score)
        rows = [GroupScore(name, kind, tuple(s.name for s in group), min(s.sqnr_db for s in group),
                           sum(min(s.sqnr_db, 200.0) for s in group) / len(group))
                for name, group in members.items()]
        groups += sorted(rows, key=lambda g: g.sqnr_min_db)
    return groups
