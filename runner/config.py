"""Run configs in YAML: model, data, decoding options, threads, search engine, warm-up and plugins."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import defaults
from runner.decode import DecodeOptions
from runner.device import spec_type
from runner.engines import DEFAULT as DEFAULT_ENGINE
from runner.engines import engine_class
from runner.errors import RunnerError
from runner.options import EvaluateOptions, coerce
from runner.plugin import PluginSpec
from runner.plugin_set import PluginSet, number_format_plugins
from runner.yamlio import read_yaml_mapping


RUN_KEYS = ("model", "threads", "device", "search", "decode", "plugins")


@dataclass
class RunConfig:
    """A run config (YAML): what `runner translate --config`, a sweep's base and `runner tune`'s plan hold.

    The YAML is flat: `model`, `threads`, `device`, `search`, `decode:` (decoding options), `plugins:`
    and the `EvaluateOptions` keys (data, split, text, limit, sample, seed, warmup, batch_size).

    Attributes:
        model: the model (None: the embedded demo model).
        threads: intra-op threads (None: every core).
        device: cpu, cuda, cuda:N or auto (see runner.device).
        search: the beam-search engine (`runner.engines`).
        evaluate: what to decode and how to time it.
        decode: the decoding options (configs/decode.yaml's, overlaid with the YAML's `decode:`).
        plugins: the plugins, resolved and checked.
    """

    model: str | None = None
    threads: int | None = None
    device: str = "cpu"
    search: str = DEFAULT_ENGINE
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)
    decode: DecodeOptions = field(default_factory=lambda: decode_options())
    plugins: PluginSet = field(default_factory=PluginSet)

    @classmethod
    def from_yaml(cls, path: str | Path, decode_config: str | Path | None = None) -> RunConfig:
        """A run config file; `decode_config` replaces configs/decode.yaml as the base of its `decode:`."""
        return cls.from_dict(read_yaml_mapping(path, "run config"), str(path), decode_config)

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str, decode_config: str | Path | None = None) -> RunConfig:
        """A run config from a mapping; every error is one line naming `origin`."""
        known = [*RUN_KEYS, *EvaluateOptions.KEYS]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise RunnerError(f"{origin}: unknown key(s) {unknown}; allowed: {known}")
        model = coerce(values.get("model"), str | None, f"{origin}: model")
        threads = values.get("threads")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise RunnerError(f"{origin}: threads must be a positive integer, got {threads!r}")
        device = values.get("device", "cpu")
        spec_type(device, f"{origin}: device")
        search = coerce(values.get("search", DEFAULT_ENGINE), str, f"{origin}: search")
        engine_class(search, f"{origin}: search")
        evaluate = EvaluateOptions.from_dict({k: values[k] for k in EvaluateOptions.KEYS if k in values}, origin)
        decode = values.get("decode") or {}
        if not isinstance(decode, dict):
            raise RunnerError(f"{origin}: decode must be a mapping of decoding options")
        plugins = values.get("plugins") or []
        if not isinstance(plugins, list):
            raise RunnerError(f"{origin}: plugins must be a list, e.g. [{{name: dynamic-int8}}]")
        try:  # a typo fails here, naming this file
            plugin_set = PluginSet.resolve(plugins, device_type=spec_type(device), origin=origin)
        except RunnerError as error:
            raise RunnerError(error.args[0] if str(error).startswith(origin) else f"{origin}: {error}") from error
        return cls(model, threads, device, search, evaluate, decode_options(decode, decode_config, origin), plugin_set)

    @property
    def data(self) -> str | None:
        """The data root to decode (None: the demo corpus); calibrating plugins read its dev split too."""
        return self.evaluate.data

    @property
    def device_type(self) -> str | None:
        """"cpu" or "cuda" when `device` names one ("auto" decides only when the run starts)."""
        return spec_type(self.device)


def decode_options(values: dict[str, Any] | None = None, config: str | Path | None = None,
                   origin: str = "decoding options") -> DecodeOptions:
    """Decoding options: `config` (default: configs/decode.yaml, when present) overlaid with `values`.

    `runner translate` and `runner sweep` both decode with this, so the two measure alike.
    """
    path = defaults.shipped_config(config) if config else (
        defaults.DECODE_CONFIG if defaults.DECODE_CONFIG.is_file() else None)
    options = DecodeOptions.from_dict(values or {}, origin=origin)  # a bad value names where it was given
    return options if path is None else DecodeOptions.from_yaml(path, values)


FLOAT = ("none", "fp32")  # --quant values meaning "no number-format plugin"


def compose_plugins(base: Sequence[PluginSpec] = (), *, quant: str | None = None, hop: int | None = None,
                    replace: Sequence[PluginSpec] = (), extra: Sequence[str] = (),
                    options: dict[str, Any] | None = None) -> list[PluginSpec]:
    """The plugin list of one run; `runner translate`, every sweep row and `runner serve` compose it here.

    Args:
        base: a run config's plugins.
        quant: `--quant` or a grid's `quant`: "none"/"fp32" removes every number-format plugin
            (int8, fp16, bf16, and third-party ones whose `effects` declare `number_format`);
            another name replaces them with that plugin, keeping `base`'s options for it if listed.
        hop: `--hop N` or a grid's `hop`, the shorthand for the `hop` plugin with `hop_length: N`
            (in place of `base`'s hop plugin, if it lists one).
        replace: specs that take the place of `base`'s plugins of the same name.
        extra: `--plugin` names, added with their defaults unless `base` lists them already.
        options: a grid row's `{"<plugin>.<option>": value}`, set on plugins in the list
            (options of absent plugins are ignored).

    Returns:
        New specs; `base` is not changed.
    """
    specs = [PluginSpec(s.name, dict(s.values)) for s in base]
    specs += [PluginSpec(name) for name in dict.fromkeys(extra) if all(s.name != name for s in specs)]
    for spec in [*replace, *([PluginSpec("hop", {"hop_length": hop})] if hop is not None else [])]:
        specs = [s for s in specs if s.name != spec.name] + [PluginSpec(spec.name, dict(spec.values))]
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
