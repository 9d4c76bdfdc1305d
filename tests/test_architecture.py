"""The library's shape: no import cycle anywhere in runner/ (nor the plugins installed inside it)."""

from __future__ import annotations

import ast
from pathlib import Path

from runner.defaults import REPO_ROOT


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (REPO_ROOT / "runner").rglob("*.py"):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    for path in (REPO_ROOT / "plugins").glob("*.py"):
        modules[f"runner.plugins.{path.stem}".removesuffix(".__init__")] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every runner module `path` imports, at module level or inside functions; `if TYPE_CHECKING:` aside."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.module:
                for alias in child.names:
                    name = f"{child.module}.{alias.name}"
                    found.add(name if name in modules else child.module)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in modules}


def test_no_import_cycle_in_the_library() -> None:
    modules = _modules()
    assert "runner.sweep.core" in modules and "runner.plugins.static_int8" in modules
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def walk(name: str, stack: list[str]) -> None:
        for imported in sorted(graph[name]):
            assert imported not in stack, "import cycle: " + " -> ".join([*stack[stack.index(imported):], imported])
            if imported not in done:
                walk(imported, [*stack, imported])
        done.add(name)

    for name in sorted(graph):
        walk(name, [name])


def test_the_cli_is_a_thin_layer() -> None:
    tree = ast.parse((REPO_ROOT / "runner" / "cli.py").read_text(encoding="utf-8"))
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert all(len(f.body) <= 40 for f in functions), [f.name for f in functions if len(f.body) > 40]
