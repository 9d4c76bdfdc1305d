"""Reading YAML files with one-line errors that name the file (and the line, when YAML knows it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from runner.errors import RunnerError


def read_yaml(path: str | Path, what: str, loader: type = yaml.SafeLoader) -> Any:
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"{path}: {what} not found")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RunnerError(f"{path}{where}: invalid YAML ({getattr(error, 'problem', None) or error})") from error


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    values = read_yaml(path, what) or {}
    if not isinstance(values, dict):
        raise RunnerError(f"{path}: expected a mapping at the top level of this {what}")
    return values
