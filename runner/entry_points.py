"""Extensions found through entry-point groups: plugins (`runner.plugins`) and search engines (`runner.engines`).

Both registries load a group the same way: every entry loaded, checked against its contract when the
registry loads (as pluggy's `_verify_hook` checks a hook at registration), and one broken third-party
entry refused in one line naming it rather than hiding the others.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from runner.errors import RunnerError


def load_group(group: str, kind: str, check: Callable[[str, str, Any], None]) -> dict[str, Any]:
    """Every entry of `group`, loaded and checked, by name (sorted).

    Args:
        group: the entry-point group.
        kind: what an entry is, for messages ("plugin", "search engine").
        check: raises RunnerError when the loaded object breaks the contract (name, where, object).

    Raises:
        RunnerError: an entry that fails to import, or breaks its contract.
    """
    found: dict[str, Any] = {}
    for entry in metadata.entry_points(group=group):
        try:
            loaded = entry.load()
        except Exception as error:  # a broken third-party entry must not hide the others
            raise RunnerError(f"{kind} '{entry.name}' ({entry.value}) failed to load: {error}") from error
        check(entry.name, entry.value, loaded)
        found[entry.name] = loaded
    return dict(sorted(found.items()))
