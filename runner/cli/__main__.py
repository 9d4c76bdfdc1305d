"""`python -m runner.cli`: the `runner` command."""

from runner.cli.app import app

app()
