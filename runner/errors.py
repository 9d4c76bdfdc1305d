"""The one exception type the runner raises for bad input; the CLI prints it on one line."""


class RunnerError(Exception):
    """A user-facing problem: the message names the file (or option) and what is wrong with it."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line, for `error: <file>: <problem>` output."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
