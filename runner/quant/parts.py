"""Shared pieces of the quantization plugins: the int8 backend, part selection, module naming."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import torch

from runner.errors import RunnerError
from runner.plugin import MODEL_PARTS

ENGINE_PREFERENCE = ("x86", "fbgemm", "onednn", "qnnpack")
MODULE_TYPES: dict[str, type[torch.nn.Module]] = {"Linear": torch.nn.Linear, "LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU}
# A model part may hold several attributes of the ESPnet model (both CTC heads).
PART_ATTRIBUTES = {"encoder": ("preencoder", "encoder"), "ctc": ("ctc", "st_ctc")}


def select_backend(name: str) -> str:
    """Set torch.ao's quantized engine (the int8 backend); 'auto' takes the best one this CPU's torch supports.

    The runner applies plugins inside `runner.environment.torch_settings`, which restores the
    caller's backend afterwards and sets this one again around every translation.
    """
    supported = torch.backends.quantized.supported_engines
    if name == "auto":
        name = next((e for e in ENGINE_PREFERENCE if e in supported), "none")
    if name not in supported or name == "none":
        raise RunnerError(f"int8 backend (torch.ao quantized engine) '{name}' is not supported here; supported: {supported}")
    torch.backends.quantized.engine = name
    return name


def check_parts(parts: list[str]) -> None:
    unknown = sorted(set(parts) - set(MODEL_PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; parts are {list(MODEL_PARTS)}")
    if not parts:
        raise ValueError("parts must name at least one of " + ", ".join(MODEL_PARTS))


def part_prefixes(model: torch.nn.Module, parts: list[str]) -> list[str]:
    """Attribute names of the model that exist for the requested parts."""
    prefixes = []
    for part in parts:
        for attribute in PART_ATTRIBUTES.get(part, (part,)):
            if isinstance(getattr(model, attribute, None), torch.nn.Module):
                prefixes.append(attribute)
    return prefixes


def matches(name: str, pattern: str) -> bool:
    """Whether a module name matches a `skip`/`only` glob (the glob may leave out leading names)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


def named_targets(model: torch.nn.Module, parts: list[str], types: tuple[type, ...],
                  skip: list[str], only: list[str] = ()) -> Iterator[tuple[str, torch.nn.Module]]:
    """Modules of `types` inside `parts`, by full name, minus names matching a `skip` glob
    (and, when `only` is given, just those matching one of its globs)."""
    prefixes = part_prefixes(model, parts)
    for name, module in model.named_modules():
        if not isinstance(module, types) or not any(name == p or name.startswith(p + ".") for p in prefixes):
            continue
        if any(matches(name, pattern) for pattern in skip) or (only and not any(matches(name, p) for p in only)):
            continue
        yield name, module


def check_globs(model: torch.nn.Module, plugin: str, **globs: list[str]) -> None:
    """Refuse `skip`/`only` globs that match no module of `model` (a plan written for another model).

    Args:
        model: the model the plugin changes.
        plugin: the plugin's name, for the message.
        globs: option name -> its globs (skip=..., only=...).

    Raises:
        RunnerError: naming the plugin, the option and the first few globs that match nothing.
    """
    names = [name for name, _ in model.named_modules()]
    for option, patterns in globs.items():
        unmatched = [p for p in patterns if not any(matches(name, p) for name in names)]
        if not unmatched:
            continue
        listed = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
        raise RunnerError(f"plugin '{plugin}': {option} names no module of this model: {listed} "
                          f"(a plan written for another model?)")


def set_submodule(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def count_types(model: torch.nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for module in model.modules():
        kind = type(module)
        if "quantized" in kind.__module__ or kind.__name__ in ("Quantize", "DeQuantize"):
            key = f"{kind.__module__.split('.')[-1]}.{kind.__name__}"
            counts[key] = counts.get(key, 0) + 1
    return counts
