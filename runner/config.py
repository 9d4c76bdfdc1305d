"""Run configs in YAML: model, data, decoding options, threads, warm-up and plugins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runner import defaults
from runner.decode import DecodeOptions
from runner.errors import RunnerError
from runner.plugin import PluginSpec
from runner.yamlio import read_yaml_mapping
from runner.plugin import resolve as resolve_plugins

QUANT_PLUGINS = ("dynamic-int8", "dynamic-fp16", "static-int8", "bf16")


@dataclass
class RunConfig:
    model: str | None = None
    data: str | None = None
    split: str = "tst-COMMON"
    text: str | None = None
    limit: int | None = None
    sample: bool = False
    seed: int = 0
    threads: int | None = None
    warmup: int = 1
    decode: dict[str, Any] = field(default_factory=dict)
    plugins: list[PluginSpec] = field(default_factory=list)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(read_yaml_mapping(path, "run config"), str(path))

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str) -> RunConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise RunnerError(f"{origin}: unknown key(s) {unknown}; allowed: {known}")
        config = cls(**{k: v for k, v in values.items() if k not in ("plugins", "decode")})
        for name, kind in (("split", str), ("sample", bool), ("seed", int), ("warmup", int)):
            if not isinstance(getattr(config, name), kind):
                raise RunnerError(f"{origin}: {name} must be {kind.__name__}, got {getattr(config, name)!r}")
        for name in ("limit", "threads"):
            value = getattr(config, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise RunnerError(f"{origin}: {name} must be a positive integer, got {value!r}")
        decode = values.get("decode") or {}
        if not isinstance(decode, dict):
            raise RunnerError(f"{origin}: decode must be a mapping of decoding options")
        DecodeOptions.from_dict(decode, origin=f"{origin}: decode")  # validate early
        config.decode = decode
        plugins = values.get("plugins") or []
        if not isinstance(plugins, list):
            raise RunnerError(f"{origin}: plugins must be a list, e.g. [{{name: dynamic-int8}}]")
        config.plugins = [PluginSpec.parse(entry, origin) for entry in plugins]
        try:
            resolve_plugins(config.plugins)  # a typo in a plugin fails here, naming this file
        except RunnerError as error:
            raise RunnerError(f"{origin}: {error}") from None
        return config

    def evaluate_options(self, **overrides: Any) -> Any:
        """The `EvaluateOptions` (what to decode, warm-up) this run config describes."""
        from runner.runner import EvaluateOptions

        values = dict(data=self.data, split=self.split, text=self.text, limit=self.limit, sample=self.sample,
                      seed=self.seed, warmup=self.warmup)
        return EvaluateOptions(**{**values, **overrides})


def decode_options(values: dict[str, Any] | None = None, config: str | Path | None = None) -> DecodeOptions:
    """Decoding options: `config` (default: configs/decode.yaml, when present) overlaid with `values`.

    `runner translate` and `runner sweep` both decode with this, so the two measure alike.
    """
    path = config or (defaults.DECODE_CONFIG if defaults.DECODE_CONFIG.is_file() else None)
    if path is None:
        return DecodeOptions.from_dict(values or {}, origin="decoding options")
    return DecodeOptions.from_yaml(path, values)


def plugin_specs(base: list[PluginSpec], quant: str | None, hop: int | None,
                 extra: Sequence[str] = ()) -> list[PluginSpec]:
    """Command-line --quant/--hop/--plugin on top of a config's plugin list (the command line wins)."""
    specs = [s for s in base if s.name not in extra] + [PluginSpec(name) for name in extra]
    if hop is not None:
        specs = [s for s in specs if s.name != "hop"] + [PluginSpec("hop", {"hop_length": hop})]
    if quant is not None and quant not in ("none", "fp32"):
        specs = [s for s in specs if s.name not in QUANT_PLUGINS] + [PluginSpec(quant)]
    return specs
