"""The plugin contract: a named technique with a typed config, declared effects and one `apply` step.

A plugin is a small class, found through the entry-point group `runner.plugins` (the built-ins
are registered there too, so a third party's plugin is treated exactly like them):

    @dataclass
    class HalveBeamConfig:
        factor: int = 2                          # the plugin's options, typed

    class HalveBeam(Plugin):
        name = "halve-beam"
        description = "Divide the ST beam size by `factor`"
        Config = HalveBeamConfig
        effects = Effects(search=True)           # what it changes: frontend, number format, search
        after = ("number-format",)               # ordering constraints: plugin names or effect kinds
        devices = ("cpu", "cuda")                # where it runs (the default); others refuse it

        def apply(self, bundle: ModelBundle) -> None:
            bundle.speech2text.beam_search.beam_size //= self.config.factor

The runner calls the hooks in this order:

1. `apply(bundle)`, once per plugin, in the order the constraints give (ties broken by name, so
   the order a user lists plugins in never changes a result);
2. `calibrate(bundle, utterances)`, for plugins whose `Config` subclasses `CalibrationConfig`,
   after every plugin is applied, so calibration sees the model exactly as it will run; a plugin
   with `calibrate_before_next = True` is calibrated right after its own `apply`, before the
   plugins after it apply (SmoothQuant measures the float activations int8 will then see);
3. `translation_context(bundle)`, entered around every translation (e.g. an autocast region);
4. `describe()`, for reports: the config plus what `apply`/`calibrate` recorded in `details`.

A number-format plugin (`effects.number_format`) names the model parts it changes with
`number_format_parts()` (by default its config's `parts`, else every part); two plugins may not
change the same part. `runner translate --quant none` removes every number-format plugin, and a
sweep compares each one against the float run of the same grid point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

from runner.errors import RunnerError
from runner.options import coerce, type_name

if TYPE_CHECKING:
    from runner.data import Utterance
    from runner.model import ModelBundle

ENTRY_POINT_GROUP = "runner.plugins"
MODEL_PARTS = ("encoder", "extra_asr_decoder", "md_encoder", "decoder", "ctc")
DECODER_PARTS = ("extra_asr_decoder", "decoder")  # the parts a beam search steps through
EFFECT_KINDS = ("frontend", "number-format", "search")
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Effects:
    """What a plugin changes. The runner orders, checks and compares plugins by these, never by name."""

    frontend: bool = False  # the features the encoder sees (e.g. the STFT hop length)
    number_format: bool = False  # the number format of weights or arithmetic (int8, fp16, bf16)
    search: bool = False  # how a beam-search step is computed, not the numbers it computes with

    def kinds(self) -> tuple[str, ...]:
        """The effect kinds set, as `after`/`before` constraints name them."""
        flags = (self.frontend, self.number_format, self.search)
        return tuple(kind for kind, on in zip(EFFECT_KINDS, flags) if on)


@dataclass
class CalibrationConfig:
    """Options of a plugin that calibrates: subclass this for the plugin's `Config`.

    The runner then feeds `calibrate` with utterances of `calibration_split` of
    `calibration_data` (default: the evaluated data, else the embedded demo corpus), disjoint
    from every utterance it evaluates.
    """

    calibration_data: str | None = None
    calibration_split: str = "dev"
    calibration_size: int = 32
    calibration_seed: int | None = None  # None: the first calibration_size utterances

    def validate(self) -> None:
        if self.calibration_size < 1:
            raise ValueError(f"calibration_size must be at least 1, got {self.calibration_size}")


class Plugin:
    """Subclass with `name`, `description`, a dataclass `Config`, `effects` and `apply`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    effects: ClassVar[Effects] = Effects()
    # Plugin names or effect kinds ("frontend", "number-format", "search") this one must follow / precede.
    after: ClassVar[tuple[str, ...]] = ()
    before: ClassVar[tuple[str, ...]] = ()
    # Device types ("cpu", "cuda") the plugin runs on; a run on another device refuses it in one line
    # that gives `device_note` as the reason.
    devices: ClassVar[tuple[str, ...]] = DEVICE_TYPES
    device_note: ClassVar[str] = ""
    # A calibrating plugin whose calibration must finish before the plugins after it apply.
    calibrate_before_next: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config
        self.details: dict[str, Any] = {}  # what apply/calibrate did, for the report

    @classmethod
    def calibrates(cls) -> bool:
        """Whether the runner must call `calibrate` (the plugin's Config subclasses CalibrationConfig)."""
        return issubclass(cls.Config, CalibrationConfig)

    def apply(self, bundle: ModelBundle) -> None:
        """Change the loaded model (in place: its beam searches hold references to its modules)."""
        raise NotImplementedError

    def calibrate(self, bundle: ModelBundle, utterances: list[Utterance]) -> None:
        """Feed calibration utterances through the model, then finish the transformation."""

    def number_format_parts(self) -> tuple[str, ...]:
        """Model parts whose number format this plugin changes (checked for conflicts)."""
        if not self.effects.number_format:
            return ()
        parts = getattr(self.config, "parts", None)
        return tuple(parts) if parts is not None else MODEL_PARTS

    def translation_context(self, bundle: ModelBundle) -> contextlib.AbstractContextManager[Any]:
        """A context entered around every translation (default: none)."""
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        """The plugin's name, config and details, for reports."""
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


@functools.cache
def _registry() -> dict[str, type[Plugin]]:
    plugins: dict[str, type[Plugin]] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugin = entry.load()
        except Exception as error:  # a broken third-party plugin must not hide the others
            raise RunnerError(f"plugin '{entry.name}' ({entry.value}) failed to load: {error}") from error
        _check_class(entry.name, entry.value, plugin)
        plugins[entry.name] = plugin
    return dict(sorted(plugins.items()))


def _check_class(name: str, where: str, plugin: Any) -> None:
    problems = []
    if not (isinstance(plugin, type) and issubclass(plugin, Plugin)):
        problems.append("is not a runner.plugin.Plugin subclass")
    else:
        if getattr(plugin, "name", None) != name:
            problems.append(f"has name {getattr(plugin, 'name', None)!r}, registered as '{name}'")
        if not dataclasses.is_dataclass(getattr(plugin, "Config", None)):
            problems.append("has no dataclass Config")
        if not isinstance(plugin.effects, Effects):
            problems.append("declares effects that are not an Effects(...)")
        unknown = [c for c in (*plugin.after, *plugin.before) if not isinstance(c, str)]
        if unknown:
            problems.append(f"has constraints that are not names: {unknown}")
        devices = getattr(plugin, "devices", None)
        if not (isinstance(devices, tuple) and devices and set(devices) <= set(DEVICE_TYPES)):
            problems.append(f"declares devices {devices!r}; expected a non-empty tuple of {list(DEVICE_TYPES)}")
    if problems:
        raise RunnerError(f"plugin '{name}' ({where}) {'; '.join(problems)}")


def available(refresh: bool = False) -> dict[str, type[Plugin]]:
    """Every plugin registered under the `runner.plugins` entry-point group, by name.

    Args:
        refresh: scan the installed distributions again (after installing a plugin in-process).
    """
    if refresh:
        _registry.cache_clear()
    return _registry()


def number_format_plugins() -> tuple[str, ...]:
    """Names of the registered plugins that change a number format (built-in or third-party)."""
    return tuple(name for name, plugin in available().items() if plugin.effects.number_format)


def runs_on(entries: Sequence[str | dict[str, Any] | PluginSpec], device_type: str) -> bool:
    """Whether every plugin `entries` name (names, `{name: ...}` dicts or specs) runs on `device_type`.

    Raises:
        RunnerError: an entry names no registered plugin.
    """
    registry = available()
    names = [e.name if isinstance(e, PluginSpec) else PluginSpec.parse(e, "plugins").name for e in entries]
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise RunnerError(f"unknown plugin '{unknown[0]}'; available: {', '.join(registry)}")
    return all(device_type in registry[name].devices for name in names)


def config_fields(plugin: type[Plugin]) -> list[tuple[str, str, Any]]:
    """(name, type as text, default) of a plugin's config, for `runner plugins`."""
    hints = typing.get_type_hints(plugin.Config)
    rows = []
    for f in dataclasses.fields(plugin.Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, type_name(hints[f.name]), default))
    return rows


def build(spec: PluginSpec, registry: dict[str, type[Plugin]] | None = None) -> Plugin:
    """A plugin instance from a spec: unknown names and bad values are one-line errors."""
    registry = registry if registry is not None else available()
    if spec.name not in registry:
        registry = available(refresh=True)  # installed since the last scan?
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


def resolve(specs: list[PluginSpec], registry: dict[str, type[Plugin]] | None = None,
            device_type: str | None = None) -> list[Plugin]:
    """Build a plugin list, check it for conflicts, and order it by the plugins' constraints.

    Args:
        specs: the plugins and their option values.
        registry: plugins by name (default: every registered one).
        device_type: "cpu" or "cuda": refuse plugins that do not run there (None: no check).

    Returns:
        The plugins in application order: constraints first, then names, never the listing order.
    """
    plugins = [build(spec, registry) for spec in specs]
    names = [p.name for p in plugins]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RunnerError(f"plugin(s) {duplicates} given more than once; give each plugin once")
    owners: dict[str, str] = {}
    for plugin in plugins:
        for part in plugin.number_format_parts():
            if part in owners:
                raise RunnerError(
                    f"plugins '{owners[part]}' and '{plugin.name}' both change the number format of the {part}; "
                    f"restrict one of them with its 'parts' option"
                )
            owners[part] = plugin.name
    if device_type is not None:
        from runner.device import check_plugins

        check_plugins(plugins, device_type)
    return order(plugins)


def _names(target: str, plugin: Plugin) -> bool:
    return target == plugin.name or target in plugin.effects.kinds()


def order(plugins: list[Plugin]) -> list[Plugin]:
    """Plugins sorted so every `after`/`before` constraint holds; ties by name. A cycle is an error."""
    follows: dict[str, set[str]] = {p.name: set() for p in plugins}  # name -> names that must come first
    for first in plugins:
        for then in plugins:
            if first is not then and (any(_names(t, first) for t in then.after)
                                       or any(_names(t, then) for t in first.before)):
                follows[then.name].add(first.name)
    by_name = {p.name: p for p in plugins}
    ready = [name for name, before in follows.items() if not before]
    heapq.heapify(ready)
    ordered: list[Plugin] = []
    while ready:
        name = heapq.heappop(ready)
        ordered.append(by_name[name])
        for other, before in follows.items():
            if name in before:
                before.discard(name)
                if not before:
                    heapq.heappush(ready, other)
    if len(ordered) < len(plugins):
        stuck = sorted(name for name, before in follows.items() if before)
        raise RunnerError(f"plugins {stuck} constrain each other in a cycle (see their 'after'/'before'); "
                          f"drop one of them")
    return ordered


@contextlib.contextmanager
def translation_contexts(plugins: list[Plugin], bundle: ModelBundle) -> Iterator[None]:
    """Every plugin's `translation_context`, entered in application order."""
    with contextlib.ExitStack() as stack:
        for plugin in plugins:
            stack.enter_context(plugin.translation_context(bundle))
        yield
