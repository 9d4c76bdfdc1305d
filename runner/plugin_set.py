"""Plugins resolved once: the registry (entry points), building and checking configs, and the `PluginSet`.

A `PluginSet` is built once from what a user wrote (names, `{name: ..., option: ...}` mappings or
`PluginSpec`s): each plugin found through the `runner.plugins` entry-point group (checked when the
registry loads), its options coerced and validated, number-format conflicts and devices checked,
and the plugins ordered by their declared constraints. A run config, a sweep row and a served
scheme each hold one; a `Runner` builds its plugin instances from it. Nothing else resolves plugins.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from runner.registry import Registry
from runner.errors import RunnerError
from runner.options import coerce, type_name
from runner.plugin import DEVICE_TYPES, ENTRY_POINT_GROUP, Effects, Plugin, PluginSpec


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


REGISTRY: Registry[type[Plugin]] = Registry(ENTRY_POINT_GROUP, "plugin", _check_class)


def available(refresh: bool = False) -> dict[str, type[Plugin]]:
    """Every plugin registered under the `runner.plugins` entry-point group, by name.

    Args:
        refresh: scan the installed distributions again (after installing a plugin in-process).
    """
    return REGISTRY.available(refresh)


def number_format_plugins() -> tuple[str, ...]:
    """Names of the registered plugins that change a number format (built-in or third-party)."""
    return tuple(name for name, plugin in available().items() if plugin.effects.number_format)


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
        from runner.engines import available as engines

        if spec.name in engines():
            raise RunnerError(f"'{spec.name}' is a search engine, not a plugin: choose it with --search {spec.name} "
                              f"(search: {spec.name} in a run config)")
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


@dataclass(frozen=True)
class PluginSet:
    """Plugins resolved, validated and ordered once; `instances()` gives a runner its own plugin objects.

    Attributes:
        plugins: checked plugin objects in application order (templates: a runner gets copies).
        given: the specs they were built from, as written (same order).
    """

    plugins: tuple[Plugin, ...] = ()
    given: tuple[PluginSpec, ...] = ()

    @classmethod
    def resolve(cls, entries: Iterable[str | dict[str, Any] | PluginSpec] | PluginSet = (),
                device_type: str | None = None, origin: str = "plugins",
                registry: dict[str, type[Plugin]] | None = None) -> PluginSet:
        """Build, check and order plugins.

        Args:
            entries: names, `{name: ..., option: ...}` mappings or specs (a `PluginSet` is returned as is,
                checked for `device_type`).
            device_type: "cpu" or "cuda": refuse plugins that do not run there (None: no check).
            origin: what error messages name for a malformed entry (a file, an option).
            registry: plugins by name (default: every registered one).

        Raises:
            RunnerError: an unknown plugin or option, a bad value, a plugin given twice, two plugins
                changing one part's number format, a plugin that does not run on `device_type`, or
                constraints that form a cycle (one line each).
        """
        if isinstance(entries, PluginSet):
            resolved = entries
        else:
            specs = [e if isinstance(e, PluginSpec) else PluginSpec.parse(e, origin) for e in entries]
            plugins = [build(spec, registry) for spec in specs]
            _check_conflicts(plugins)
            ordered = order(plugins)
            by_name = {spec.name: spec for spec in specs}
            resolved = cls(tuple(ordered), tuple(by_name[p.name] for p in ordered))
        if device_type is not None:
            resolved.check_device(device_type)
        return resolved

    @property
    def names(self) -> tuple[str, ...]:
        """The plugins' names, in application order."""
        return tuple(p.name for p in self.plugins)

    def __iter__(self) -> Iterator[Plugin]:
        return iter(self.plugins)

    def __len__(self) -> int:
        return len(self.plugins)

    def instances(self) -> list[Plugin]:
        """Fresh plugin objects (each with its own copy of its config and empty details), in order."""
        return [type(p)(copy.deepcopy(p.config)) for p in self.plugins]

    def specs(self) -> list[PluginSpec]:
        """Copies of the specs the set was built from, in application order (to compose another set from)."""
        return [PluginSpec(s.name, copy.deepcopy(s.values)) for s in self.given]

    def runs_on(self, device_type: str) -> bool:
        """Whether every plugin runs on `device_type` ("cpu" or "cuda")."""
        return all(device_type in p.devices for p in self.plugins)

    def check_device(self, device_type: str, where: str = "--device") -> None:
        """Refuse, in one line, a plugin that does not run on `device_type` ("cpu" or "cuda")."""
        for plugin in self.plugins:
            if device_type not in plugin.devices:
                why = plugin.device_note
                raise RunnerError(f"plugin '{plugin.name}' runs on {' and '.join(plugin.devices)} only, not "
                                  f"{device_type}{f' ({why})' if why else ''}; drop it or use {where} "
                                  f"{plugin.devices[0]}")


def _check_conflicts(plugins: list[Plugin]) -> None:
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
