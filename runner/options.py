"""Typed options from YAML or the command line: one coercion for decoding, plugin and evaluation options.

`coerce("4", int, where)` is 4; `coerce("4.5", int, where)` and `coerce(True, int, where)` are the
same one-line `RunnerError` naming `where`, whichever option they were given for.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

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




@dataclass(frozen=True)
class EvaluateOptions:
    """What to decode and how to time it: `Runner.evaluate`'s arguments, a run config's keys, a sweep's.

    Attributes:
        data: a MuST-C release (any of its roots) or an ESPnet/Kaldi data directory (None: the demo corpus).
        split: the MuST-C split to decode.
        text: the reference file's name inside a Kaldi data directory.
        limit: decode only this many utterances (None: all).
        sample: draw the `limit` utterances with `seed` instead of taking the first ones.
        seed: the seed for `sample`.
        warmup: leading utterances decoded but left out of latency (they count for BLEU).
        batch_size: utterances per beam search (an engine that batches); the warm-up ones form their own batch.
        progress: show progress bars on stderr.
        exclude_ids: segment ids left out (a tuner's calibration utterances).
        part: only utterances [start, stop) of the selection (a sweep shard).

    Raises:
        RunnerError: a value of the wrong type or out of range, in one line naming the option.
    """

    data: str | None = None
    split: str = "tst-COMMON"
    text: str | None = None
    limit: int | None = None
    sample: bool = False
    seed: int = 0
    warmup: int = 1
    batch_size: int = 1
    progress: bool = False
    exclude_ids: tuple[str, ...] = ()
    part: tuple[int, int] | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("data", "split", "text", "limit", "sample", "seed", "warmup", "batch_size")

    def __post_init__(self) -> None:
        self.check("evaluate options")

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "evaluate options") -> EvaluateOptions:
        """Options from YAML or keyword values, each coerced to its type; an unknown key is an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise RunnerError(f"{origin}: unknown option(s) {unknown}; allowed: {names}")
        hints = typing.get_type_hints(cls)
        typed = {name: coerce(str(value) if isinstance(value, Path) else value, hints[name], f"{origin}: {name}")
                 for name, value in values.items() if name not in ("exclude_ids", "part")}
        if "exclude_ids" in values:
            typed["exclude_ids"] = tuple(values["exclude_ids"] or ())
        if values.get("part") is not None:
            typed["part"] = tuple(values["part"])
        options = cls.__new__(cls)
        for field in dataclasses.fields(cls):
            object.__setattr__(options, field.name, typed.get(field.name, field.default))
        options.check(origin)
        return options

    def replace(self, **changes: Any) -> EvaluateOptions:
        """These options with `changes` (None values leave an option as it is), checked."""
        return self.from_dict({**dataclasses.asdict(self), **{k: v for k, v in changes.items() if v is not None}})

    def check(self, origin: str) -> None:
        """Refuse values out of range, naming `origin` and the option."""
        hints = typing.get_type_hints(type(self))
        for name in ("data", "split", "text", "limit", "sample", "seed", "warmup", "batch_size", "progress"):
            value = getattr(self, name)
            object.__setattr__(self, name, coerce(str(value) if isinstance(value, Path) else value, hints[name],
                                                  f"{origin}: {name}"))
        for name, least in (("limit", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise RunnerError(f"{origin}: {name} must be a positive integer, got {value!r}")
        if self.warmup < 0:
            raise RunnerError(f"{origin}: warmup must be 0 or more, got {self.warmup}")
