"""The one exception type the runner raises for bad input; the CLI prints it on one line."""


class RunnerError(Exception):
    """A user-facing problem: the message names the file (or option) and what is wrong with it."""
