"""Import ESPnet without its import-time noise.

Importing espnet2 prints a flash-attn notice, makes g2p_en/NLTK try (and, offline, fail)
to download data, and emits deprecation warnings from modules the runner never uses.
None of it concerns a user of the runner, so it is swallowed here, once.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

_cache: dict[str, ModuleType] = {}


@contextlib.contextmanager
def root_handlers_kept() -> Iterator[None]:
    """Undo handlers added to the root logger inside the block.

    ESPnet logs through the module-level `logging.info(...)`, which calls `logging.basicConfig()`
    (a stderr handler on the root logger) whenever the root has none: the host program's logging
    would change the first time the runner decodes.
    """
    before = list(logging.root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in logging.root.handlers if h not in before]:
            logging.root.removeHandler(handler)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python-level stdout/stderr, warnings and ESPnet's logging inside the block."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), \
            root_handlers_kept():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def st_inference() -> ModuleType:
    """`espnet2.bin.st_inference`, imported quietly once."""
    return _imported("espnet2.bin.st_inference")


def asr_inference() -> ModuleType:
    """`espnet2.bin.asr_inference`, imported quietly once."""
    return _imported("espnet2.bin.asr_inference")


def _imported(name: str) -> ModuleType:
    if name not in _cache:
        # NLTK reads NLTK_DATA when imported: point it nowhere for the import only, so it
        # does not try to download, and leave the host program's environment as it was.
        previous = os.environ.get("NLTK_DATA")
        os.environ["NLTK_DATA"] = os.devnull if previous is None else previous
        try:
            with quiet():
                module = importlib.import_module(name)
        finally:
            if previous is None:
                os.environ.pop("NLTK_DATA", None)
        _cache[name] = module
    return _cache[name]


def st_task() -> type:
    return st_inference().STTask


def asr_task() -> type:
    return asr_inference().ASRTask
