"""Typed options from YAML or the command line: one coercion for decoding and plugin options.

`coerce("4", int, where)` is 4; `coerce("4.5", int, where)` and `coerce(True, int, where)` are the
same one-line `RunnerError` naming `where`, whichever option they were given for.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

from runner.errors import RunnerError


def type_name(hint: Any) -> str:
    """A type hint as `runner plugins` prints it: `int`, `linear|block`, `list[str]`, `str or None`."""
    if get_origin(hint) is Literal:
        return "|".join(str(a) for a in get_args(hint))
    if get_origin(hint) in (list, tuple):
        return f"list[{type_name(get_args(hint)[0])}]"
    if get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(hint))
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
        raise RunnerError(f"{where} must be {type_name(hint)}, got {value!r}")
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


