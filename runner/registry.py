"""Extensions by entry-point group: plugins (`runner.plugins`), search engines (`runner.engines`) and sweep
executors (`runner.executors`), each a `Registry`, built-ins and third parties registered alike.

A registry loads an entry and checks it against its contract when it loads (as pluggy's `_verify_hook`
checks a hook at registration); one broken third-party entry is refused in one line naming it rather than
hiding the others. An unknown name is one line listing the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from runner.errors import RunnerError

T = TypeVar("T")


class Registry(Generic[T]):
    """The extensions of one kind.

    Args:
        group: the entry-point group.
        kind: what an entry is, for messages ("plugin", "search engine", "executor").
        check: raises RunnerError when a loaded object breaks the contract (name, entry value, object).
        eager: load every entry on first use (plugins, engines: their classes are small and checked all at
            once); False loads an entry only when it is asked for by name (an executor may import Ray).
    """

    def __init__(self, group: str, kind: str, check: Callable[[str, str, Any], None], eager: bool = True) -> None:
        self.group, self.kind, self.check, self.eager = group, kind, check, eager
        self._loaded: dict[str, T] | None = None

    def _entries(self) -> dict[str, metadata.EntryPoint]:
        return {entry.name: entry for entry in metadata.entry_points(group=self.group)}

    def _load(self, entry: metadata.EntryPoint) -> T:
        try:
            loaded = entry.load()
        except Exception as error:  # a broken third-party entry must not hide the others
            raise RunnerError(f"{self.kind} '{entry.name}' ({entry.value}) failed to load: {error}") from error
        self.check(entry.name, entry.value, loaded)
        return loaded

    def names(self) -> list[str]:
        """The registered names, sorted, without loading anything."""
        return sorted(self._entries())

    def available(self, refresh: bool = False) -> dict[str, T]:
        """Every entry, loaded and checked, by name (sorted).

        Args:
            refresh: scan the installed distributions again (after installing an extension in-process).
        """
        if refresh or self._loaded is None:
            self._loaded = {name: self._load(entry) for name, entry in sorted(self._entries().items())}
        return dict(self._loaded)

    def get(self, name: str, where: str) -> T:
        """The entry called `name`, loaded and checked (distributions scanned again once if it is missing).

        Raises:
            RunnerError: no entry of that name, as `<where>: unknown <kind> '<name>'; available: ...`.
        """
        if self.eager:
            registry = self.available()
            found = registry.get(name) if name in registry else self.available(refresh=True).get(name)
        else:
            entry = self._entries().get(name)
            found = self._load(entry) if entry is not None else None
        if found is None:
            prefix = f"{where}: " if where else ""
            raise RunnerError(f"{prefix}unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return found
