"""Writing results: checked before the work, written whole or not at all, one writer per directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runner.errors import RunnerError

LOCK_NAME = ".st-runner.lock"


def check_writable(path: Path) -> None:
    """Refuse, in one line and before any decoding, a results file that could not be written at the end.

    Raises:
        RunnerError: `path` is a directory, lies under a file, or its directory cannot be written.
    """
    if path.is_dir():
        raise RunnerError(f"{path}: --out is a directory; name a file")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise RunnerError(f"{path}: --out lies under {ancestor}, which is a file")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise RunnerError(f"{path}: --out cannot be written ({ancestor} is not writable)")
            return


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a synced temporary file and a rename: a crash leaves the old file or the new.

    Raises:
        RunnerError: the file cannot be written (naming it and why); no temporary file is left behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise RunnerError(f"{path}: cannot write ({error.strerror or error})") from error
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise RunnerError(f"{path}: cannot write ({error.strerror or error})") from error
    return path


@contextlib.contextmanager
def output_lock(directory: Path) -> Iterator[None]:
    """Hold `directory`'s lock file for the block: a second writer is refused, naming the holder's pid.

    The lock is the kernel's (`flock`), so a writer killed with -9 leaves no stale lock behind.
    """
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunnerError(f"{directory}: another sweep (pid {holder}) is writing here; wait for it or "
                              f"choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
