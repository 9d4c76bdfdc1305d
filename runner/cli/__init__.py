"""`runner`, the command line: a thin Typer layer over the library (`app`), one module per group of commands.

`app` builds the top-level commands (translate, sweep, serve, info, plugins, demo); `quant` adds
`sensitivity` and `tune`, `export` adds `export`, `longform` holds the whole-recording paths of
`translate`. Each command parses its options, calls the library and prints; errors become one line.
"""

from runner.cli.app import app

__all__ = ["app"]
