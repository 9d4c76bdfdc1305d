"""Progress bars: one look for every long loop of the runner and its commands (tqdm, on stderr, gone when
done, so a table printed on stdout is never interleaved with one)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def bar(description: str | None = None, unit: str = "utt") -> Callable[[Iterable[T]], Iterable[T]]:
    """A wrapper that shows a bar while its iterable is consumed: `for u in bar("decode")(utterances)`."""
    from tqdm import tqdm

    def wrap(items: Iterable[T]) -> Iterable[T]:
        return tqdm(items, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)

    return wrap


def counter(total: int, description: str, unit: str, enabled: bool = True) -> Any:
    """A bar advanced by hand (`.update(1)`, `.set_description`, `.close()`), for work that finishes out of
    order; with `enabled` False it draws nothing."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True)
