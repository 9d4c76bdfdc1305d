"""What every command shares: one-line errors (`fail`), --debug, notes on stderr, `--set KEY=VALUE` pairs."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, NoReturn

import typer

from runner.errors import OptionError

DEBUG_VARIABLE = "ST_RUNNER_DEBUG"
_debug = False  # --debug, set by the app's callback (set_debug)

class _Stderr(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is when a note is logged (an app invoked twice in one
    process, as by typer's CliRunner, gets its notes in the second invocation's stderr too)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def show_notes() -> None:
    """The runner's logger prints its notes (where calibration data came from, ...) on stderr."""
    logger = logging.getLogger("runner")
    if not any(getattr(h, "runner_cli", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("note: %(message)s"))
        handler.runner_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def fail(message: str, code: int = 2, error: BaseException | None = None) -> NoReturn:
    """Print `error: message` (with the traceback under --debug) and exit with `code`."""
    if error is not None and (_debug or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")):
        traceback.print_exception(error, file=sys.stderr)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` pairs as a mapping (dashes in keys read as underscores)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip().replace("-", "_")] = value.strip()
    return overrides


def set_debug(debug: bool) -> None:
    """--debug: `fail` prints the traceback of the error it reports."""
    global _debug
    _debug = debug


def flag_error(error: OptionError, flags: dict[str, str] | None = None) -> str:
    """An option type's error with its field named as the command's flag (`flags`: field -> flag where the
    two differ; otherwise `--field-name`)."""
    flag = (flags or {}).get(error.option, "--" + error.option.replace("_", "-"))
    return f"{flag}: {error.problem}"
