"""Reading YAML and text files with one-line errors that name the file (and the line, when known).

A YAML file is input a stranger may have written: a few hundred bytes of nested aliases (a "billion
laughs") expand to billions of nodes in whatever walks the document afterwards. `read_yaml` counts
the nodes the document expands to before building it and refuses more than `MAX_NODES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from runner.errors import RunnerError

MAX_NODES = 5_000_000  # expanded nodes: MuST-C's largest train YAML has about 2.5 M


def _expanded_nodes(root: yaml.Node, limit: int) -> int:
    """How many nodes `root` expands to, aliases counted as copies; stops counting past `limit`."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            list(node.value) if isinstance(node, yaml.SequenceNode) else []
        if children_done or not children:
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _load(text: str, loader: type, path: Path) -> Any:
    instance = loader(text)
    try:
        node = instance.get_single_node()
        if node is None:
            return None
        if "*" in text and _expanded_nodes(node, MAX_NODES) > MAX_NODES:  # an alias can only start with '*'
            raise RunnerError(f"{path}: its aliases expand to more than {MAX_NODES:,} YAML nodes; refused "
                              f"(an alias bomb?)")
        return instance.construct_document(node)
    finally:
        instance.dispose()


def read_utf8(path: Path, what: str) -> str:
    """The text of `path`; RunnerError naming the file and line when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise RunnerError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{error.object[error.start]:02x})") from error


def read_yaml(path: str | Path, what: str, loader: type = yaml.SafeLoader) -> Any:
    """The YAML document at `path`, built by `loader`.

    Args:
        path: the file; what: what it is, for the error ("run config").
        loader: a PyYAML loader class (default: SafeLoader).

    Raises:
        RunnerError: one line naming the file: missing, not UTF-8, invalid YAML, or an alias bomb.
    """
    path = Path(path)
    if not path.is_file():
        raise RunnerError(f"{path}: {what} not found")
    text = read_utf8(path, what)
    try:
        return _load(text, loader, path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = str(getattr(error, "problem", None) or error).splitlines()[0][:200]
        raise RunnerError(f"{path}{where}: invalid YAML ({problem})") from error


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """`read_yaml`, which must give a mapping (an empty file gives {})."""
    values = read_yaml(path, what) or {}
    if not isinstance(values, dict):
        raise RunnerError(f"{path}: expected a mapping at the top level of this {what}")
    return values
