"""The exceptions the runner raises for bad input; the CLI prints them on one line.

Each keeps what caused it as ``__cause__`` (``raise RunnerError(...) from error``), so
``runner --debug`` (or ``ST_RUNNER_DEBUG=1``) can print the whole chain.
"""


class RunnerError(Exception):
    """A user-facing problem: the message names the file (or option) and what is wrong with it."""


class OptionError(RunnerError):
    """An option type refusing a value (`SegmentOptions`, `ServeLimits`, ...): the library names its field, so
    the CLI can name its flag instead (`runner.cli.common.flag_error`)."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option, self.problem = option, problem


class DecodeTimeoutError(RunnerError):
    """A search stopped at its decoding deadline (`runner.decode.deadline`; HTTP 503 from the server)."""


class AudioTooShortError(RunnerError):
    """Audio too short for the model's frontend window or its encoder's subsampling (HTTP 422)."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line, for `error: <file>: <problem>` output."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def error_fields(error: BaseException) -> dict[str, str | None]:
    """What a failed sweep row records of an exception: its type, and its cause's type and message."""
    cause = error.__cause__
    return {"error_type": type(error).__name__,
            "error_cause": f"{type(cause).__name__}: {first_line(cause)}" if cause is not None else None}
