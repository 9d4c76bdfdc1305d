"""Guards for plugins that reach into ESPnet's internals.

A plugin that re-implements part of ESPnet's decoding (attention, CTC prefix scoring, a decoder
step) is correct only for the ESPnet code it was written against. When applied, such a plugin
checks the ESPnet version and every attribute and signature it relies on, and refuses in one
line naming what differs, rather than computing something else.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

from runner.errors import RunnerError

# The ESPnet releases the internals-patching plugins were tested with (inclusive range).
TESTED_ESPNET = ("202511", "202511")
ALLOW_UNTESTED = "ST_RUNNER_ALLOW_UNTESTED_ESPNET"


def espnet_version() -> str:
    """The installed ESPnet's version string."""
    try:
        return metadata.version("espnet")
    except metadata.PackageNotFoundError:
        return "not installed"


def _release(version: str) -> tuple[int, ...]:
    digits = []
    for piece in version.split("."):
        number = "".join(ch for ch in piece if ch.isdigit())
        if not number:
            break
        digits.append(int(number))
    return tuple(digits)


def check_espnet_version(plugin: str, tested: tuple[str, str] = TESTED_ESPNET) -> None:
    """Refuse when ESPnet is outside the `tested` range, unless $ST_RUNNER_ALLOW_UNTESTED_ESPNET=1.

    Args:
        plugin: the plugin's name, for the message.
        tested: lowest and highest ESPnet version the plugin was tested with.
    """
    version = espnet_version()
    low, high = tested
    if _release(low) <= _release(version) <= _release(high) and _release(version):
        return
    if os.environ.get(ALLOW_UNTESTED) == "1":
        return
    span = low if low == high else f"{low} to {high}"
    raise RunnerError(f"plugin '{plugin}': tested with espnet {span}, this is espnet {version}; it patches "
                      f"ESPnet internals, so it refuses (set {ALLOW_UNTESTED}=1 to try it anyway)")


def require_attributes(plugin: str, obj: Any, names: Iterable[str], what: str) -> None:
    """Refuse unless `obj` has every attribute in `names`.

    Args:
        plugin: the plugin's name, for the message.
        obj: the ESPnet object the plugin reads or patches.
        names: attributes the plugin relies on.
        what: how to call `obj` in the message, e.g. "MultiHeadedAttention".
    """
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        raise RunnerError(f"plugin '{plugin}': {what} (espnet {espnet_version()}) lacks {', '.join(missing)}, "
                          f"which the plugin relies on")


def require_parameters(plugin: str, function: Callable[..., Any], names: Iterable[str], what: str) -> None:
    """Refuse unless `function` takes parameters named `names`, in that order, first after `self`.

    Args:
        plugin: the plugin's name, for the message.
        function: the ESPnet function or method the plugin replaces or calls.
        names: the leading parameter names the plugin's replacement takes.
        what: how to call `function` in the message, e.g. "BaseTransformerDecoder.batch_score".
    """
    expected = list(names)
    actual = [p for p in inspect.signature(function).parameters if p != "self"][:len(expected)]
    if actual != expected:
        raise RunnerError(f"plugin '{plugin}': {what} (espnet {espnet_version()}) takes ({', '.join(actual)}), "
                          f"the plugin expects ({', '.join(expected)})")
