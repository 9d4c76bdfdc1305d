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
    """Every listed module `path` imports: at module level, inside functions, and under `if TYPE_CHECKING:`
    (a type-only import is still a dependency between the two modules)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module:
                for alias in child.names:
                    name = f"{child.module}.{alias.name}"
                    found.add(name if name in modules else child.module)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in modules}


def find_cycle(modules: dict[str, Path]) -> list[str] | None:
    """An import cycle among `modules` (name -> file), as the chain of names, or None."""
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def walk(name: str, stack: list[str]) -> list[str] | None:
        for imported in sorted(graph[name]):
            if imported in stack:
                return [*stack[stack.index(imported):], imported]
            if imported not in done:
                cycle = walk(imported, [*stack, imported])
                if cycle:
                    return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = walk(name, [name])
        if cycle:
            return cycle
    return None


def test_no_import_cycle_in_the_library() -> None:
    modules = _modules()
    assert "runner.sweep.core" in modules and "runner.plugins.static_int8" in modules
    cycle = find_cycle(modules)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_planted_type_checking_cycle_is_found(tmp_path: Path) -> None:
    """Two modules that import each other, one of them only for type checking: still a cycle."""
    (tmp_path / "first.py").write_text("from runner.second import B\n\nclass A: ...\n")
    (tmp_path / "second.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                        "    from runner.first import A\n\nclass B: ...\n")
    planted = {"runner.first": tmp_path / "first.py", "runner.second": tmp_path / "second.py"}
    assert find_cycle(planted) == ["runner.first", "runner.second", "runner.first"]
    assert find_cycle({**_modules(), **planted}) is not None
    (tmp_path / "second.py").write_text("class B: ...\n")
    assert find_cycle(planted) is None


def test_the_cli_is_a_thin_layer() -> None:
    """Every function of every CLI module, nested ones too (a command defined inside another function), has
    a short body: parsing options, calling the library and printing fit in 40 statements and 50 lines."""
    functions = {}
    for path in sorted((REPO_ROOT / "runner" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                functions[f"{path.name}:{node.name}"] = node
    assert {"app.py:translate", "quant.py:tune", "export.py:export", "demo.py:demo_corpus"} <= set(functions)
    long = [name for name, f in functions.items() if len(f.body) > 40 or f.end_lineno - f.body[0].lineno >= 50]
    assert not long, long
