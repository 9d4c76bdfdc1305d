"""Plugins: a named technique with a typed config and one `apply` step on a loaded model.

Built-in and third-party plugins are found alike, through the entry-point group
`runner.plugins`. A plugin that needs data (static quantization) also has `calibrate`,
which the runner feeds with utterances disjoint from the test set.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Literal, get_args, get_origin

from runner.errors import RunnerError

ENTRY_POINT_GROUP = "runner.plugins"
MODEL_PARTS = ("encoder", "extra_asr_decoder", "md_encoder", "decoder", "ctc")
DECODER_PARTS = ("extra_asr_decoder", "decoder")  # the parts a beam search steps through


class Plugin:
    """Subclass with `name`, `description`, a dataclass `Config`, and `apply`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    # Plugins run in ascending order: the frontend (hop) before anything that quantizes.
    order: ClassVar[int] = 50
    needs_calibration: ClassVar[bool] = False
    # True for a number-format plugin (int8, fp16, bf16): `--quant none` removes it, and a sweep
    # compares it against the float run of the same grid point.
    changes_number_format: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config
        self.details: dict[str, Any] = {}  # what apply/calibrate did, for the report

    def apply(self, bundle: Any) -> None:
        raise NotImplementedError

    def calibrate(self, bundle: Any, utterances: list[Any]) -> None:
        """Feed calibration utterances through the model, then finish the transformation."""

    def quantized_parts(self) -> tuple[str, ...]:
        """Model parts whose weights this plugin changes the number format of (for conflict checks)."""
        return ()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": dataclasses.asdict(self.config), **self.details}


@dataclass
class PluginSpec:
    """A plugin name plus raw config values, as written in YAML or on the command line."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: Any, origin: str) -> PluginSpec:
        if isinstance(entry, str):
            return cls(entry)
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            return cls(entry["name"], {k: v for k, v in entry.items() if k != "name"})
        raise RunnerError(f"{origin}: a plugin entry needs a name, e.g. {{name: dynamic-int8}}, got {entry!r}")


def available() -> dict[str, type[Plugin]]:
    """Every plugin registered under the `runner.plugins` entry-point group."""
    plugins: dict[str, type[Plugin]] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = entry.load()
        except Exception as error:  # a broken third-party plugin must not hide the others
            raise RunnerError(f"plugin '{entry.name}' ({entry.value}) failed to load: {error}") from error
        plugins[entry.name] = plugin
    return dict(sorted(plugins.items()))


def number_format_plugins(registry: dict[str, type[Plugin]] | None = None) -> tuple[str, ...]:
    """Names of the registered plugins that change a number format (built-in or third-party)."""
    registry = registry if registry is not None else available()
    return tuple(name for name, plugin in registry.items() if getattr(plugin, "changes_number_format", False))


def config_fields(plugin: type[Plugin]) -> list[tuple[str, str, Any]]:
    """(name, type as text, default) of a plugin's config, for `runner plugins`."""
    hints = typing.get_type_hints(plugin.Config)
    rows = []
    for f in dataclasses.fields(plugin.Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, _type_name(hints[f.name]), default))
    return rows


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "|".join(str(a) for a in get_args(hint))
    if get_origin(hint) in (list, tuple):
        return f"list[{_type_name(get_args(hint)[0])}]"
    if get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` (from YAML or the command line) as type `hint`, or a RunnerError naming `where`."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in get_args(hint):
            return None
        for option in (a for a in get_args(hint) if a is not type(None)):
            try:
                return coerce(value, option, where)
            except RunnerError:
                continue
        raise RunnerError(f"{where} must be {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise RunnerError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise RunnerError(f"{where} must be a list, got {value!r}")
        return [coerce(item.strip() if isinstance(item, str) else item, get_args(hint)[0], where) for item in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise RunnerError(f"{where} must be true or false, got {value!r}")
    if hint in (int, float):
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise RunnerError(f"{where} must be {hint.__name__}, got {value!r}") from None
        if hint is int and (isinstance(value, bool) or float(value) != number):
            raise RunnerError(f"{where} must be int, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise RunnerError(f"{where} must be a string, got {value!r}")
        return value
    return value


def build(spec: PluginSpec, registry: dict[str, type[Plugin]] | None = None) -> Plugin:
    """A plugin instance from a spec: unknown names and bad values are one-line errors."""
    registry = registry if registry is not None else available()
    if spec.name not in registry:
        raise RunnerError(f"unknown plugin '{spec.name}'; available: {', '.join(registry)}")
    plugin = registry[spec.name]
    hints = typing.get_type_hints(plugin.Config)
    names = [f.name for f in dataclasses.fields(plugin.Config)]
    unknown = sorted(set(spec.values) - set(names))
    if unknown:
        raise RunnerError(f"plugin '{spec.name}': unknown option(s) {unknown}; allowed: {names}")
    values = {k: coerce(v, hints[k], f"plugin '{spec.name}' option {k}") for k, v in spec.values.items()}
    config = plugin.Config(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as error:
            raise RunnerError(f"plugin '{spec.name}': {error}") from error
    return plugin(config)


def resolve(specs: list[PluginSpec], registry: dict[str, type[Plugin]] | None = None) -> list[Plugin]:
    """Build, order (hop before quantization) and check a plugin list for conflicts."""
    plugins = [build(spec, registry) for spec in specs]
    names = [p.name for p in plugins]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RunnerError(f"plugin(s) {duplicates} given more than once; give each plugin once")
    owners: dict[str, str] = {}
    for plugin in plugins:
        for part in plugin.quantized_parts():
            if part in owners:
                raise RunnerError(
                    f"plugins '{owners[part]}' and '{plugin.name}' both change the number format of the {part}; "
                    f"restrict one of them with its 'parts' option"
                )
            owners[part] = plugin.name
    return sorted(plugins, key=lambda p: p.order)
