"""Import ESPnet without its import-time noise.

Importing espnet2 prints a flash-attn notice, makes g2p_en/NLTK try (and, offline, fail)
to download data, and emits deprecation warnings from modules the runner never uses.
None of it concerns a user of the runner, so it is swallowed here, once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from types import ModuleType

_cache: dict[str, ModuleType] = {}


@contextlib.contextmanager
def quiet():
    """Silence Python-level stdout/stderr, warnings and ESPnet's logging inside the block."""
    sink = io.StringIO()
    previous = logging.root.manager.disable
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def st_inference() -> ModuleType:
    """`espnet2.bin.st_inference`, imported quietly once."""
    if "st_inference" not in _cache:
        os.environ.setdefault("NLTK_DATA", os.devnull)
        with quiet():
            import espnet2.bin.st_inference as module
        _cache["st_inference"] = module
        # ESPnet's encode() warns about torch.cuda.amp.autocast on every first call.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"espnet2?\.")
    return _cache["st_inference"]


def st_task() -> type:
    return st_inference().STTask
