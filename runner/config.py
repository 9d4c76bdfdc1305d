"""Run configs in YAML: model, data, decoding options, threads, warm-up and plugins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runner import defaults
from runner.decode import DecodeOptions
from runner.device import spec_type
from runner.errors import RunnerError
from runner.plugin import PluginSpec, number_format_plugins
from runner.plugin import resolve as resolve_plugins
from runner.yamlio import read_yaml_mapping


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
    batch_size: int = 1  # utterances per beam search (lean engine); 1: one at a time
    device: str = "cpu"  # cpu, cuda, cuda:N or auto (see runner.device)
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
        if not isinstance(config.batch_size, int) or isinstance(config.batch_size, bool) or config.batch_size < 1:
            raise RunnerError(f"{origin}: batch_size must be a positive integer, got {config.batch_size!r}")
        spec_type(config.device, f"{origin}: device")
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
            resolve_plugins(config.plugins, device_type=config.device_type)  # a typo fails here, naming this file
        except RunnerError as error:
            raise RunnerError(f"{origin}: {error}") from error
        return config

    @property
    def device_type(self) -> str | None:
        """"cpu" or "cuda" when `device` names one ("auto" decides only when the run starts)."""
        return spec_type(self.device)

    def evaluate_options(self, **overrides: Any) -> Any:
        """The `EvaluateOptions` (what to decode, warm-up) this run config describes."""
        from runner.runner import EvaluateOptions

        values = dict(data=self.data, split=self.split, text=self.text, limit=self.limit, sample=self.sample,
                      seed=self.seed, warmup=self.warmup, batch_size=self.batch_size)
        return EvaluateOptions(**{**values, **overrides})


def decode_options(values: dict[str, Any] | None = None, config: str | Path | None = None) -> DecodeOptions:
    """Decoding options: `config` (default: configs/decode.yaml, when present) overlaid with `values`.

    `runner translate` and `runner sweep` both decode with this, so the two measure alike.
    """
    path = defaults.shipped_config(config) if config else (
        defaults.DECODE_CONFIG if defaults.DECODE_CONFIG.is_file() else None)
    if path is None:
        return DecodeOptions.from_dict(values or {}, origin="decoding options")
    return DecodeOptions.from_yaml(path, values)


SEARCH_ENGINES: dict[str, str | None] = {"espnet": None, "lean": "lean"}  # --search name -> its plugin
FLOAT = ("none", "fp32")  # --quant values meaning "no number-format plugin"


def compose_plugins(base: Sequence[PluginSpec] = (), *, quant: str | None = None, hop: int | None = None,
                    search: str | None = None, extra: Sequence[str] = (),
                    options: dict[str, Any] | None = None) -> list[PluginSpec]:
    """The plugin list of one run; `runner translate`, every sweep row and `runner serve` compose it here.

    Args:
        base: a run config's `plugins:` list.
        quant: `--quant` or a grid's `quant`: "none"/"fp32" removes every number-format plugin
            (int8, fp16, bf16, and third-party ones whose `effects` declare `number_format`);
            another name replaces them with that plugin, keeping `base`'s options for it if listed.
        hop: `--hop` or a grid's `hop`: replaces any hop plugin.
        search: `--search` or a grid's `search`: "lean" adds the lean engine's plugin, "espnet"
            removes it (ESPnet's own BatchBeamSearch).
        extra: `--plugin` names, added with their defaults unless `base` lists them already.
        options: a grid row's `{"<plugin>.<option>": value}`, set on plugins in the list
            (options of absent plugins are ignored).

    Returns:
        New specs; `base` is not changed.
    """
    specs = [PluginSpec(s.name, dict(s.values)) for s in base]
    specs += [PluginSpec(name) for name in dict.fromkeys(extra) if all(s.name != name for s in specs)]
    if hop is not None:
        specs = [s for s in specs if s.name != "hop"] + [PluginSpec("hop", {"hop_length": hop})]
    if search is not None:
        if search not in SEARCH_ENGINES:
            raise RunnerError(f"search engine must be one of {list(SEARCH_ENGINES)}, got {search!r}")
        specs = [s for s in specs if s.name != SEARCH_ENGINES["lean"]]
        if SEARCH_ENGINES[search] is not None:
            specs.append(PluginSpec(SEARCH_ENGINES[search]))
    if quant is not None:
        formats = set(number_format_plugins())
        specs = [s for s in specs if s.name not in formats or s.name == quant]  # the chosen one keeps its options
        if quant in FLOAT:
            specs = [s for s in specs if s.name not in formats]
        elif all(s.name != quant for s in specs):
            specs.append(PluginSpec(quant))
    for key, value in (options or {}).items():
        plugin, _, option = key.partition(".")
        for spec in specs:
            if spec.name == plugin:
                spec.values[option] = value
    return specs
