"""Regenerate the published command tables (README and docs/): run each row's command, rewrite the row's cells.

    python -m benchmarks.readme_tables              # run every `command` table's rows, rewrite their pages
    python -m benchmarks.readme_tables --dry-run    # print the new rows, leave the pages alone

A command table is a Markdown table whose first column is `command`; each row's command is run
in this process (`runner ...` through the CLI, with `--out`), one after another, and every cell
whose column it knows is rewritten: size, parameters, BLEU, chrF, source WER and dtype (the
deterministic figures `tests/demo/test_published_figures.py` re-measures), and latency mean (p90),
RTF and `vs fp32` (the ratio to the table's first row in the same run). The text naming the commit
latency was measured at is left to the person committing the tables.

Every table names the CPU kind it was measured on (`cpu kind `intel-amx`` in the text above it,
`runner.environment.cpu_kind`): quantized and bf16 figures can differ between kinds in their last
digits. Only the tables measured on this machine's kind are rewritten; to publish another kind's
figures, copy a table, name that kind above the copy and run this on a machine of that kind.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.defaults import REPO_ROOT

README = REPO_ROOT / "README.md"
PAGES = (README, *sorted((REPO_ROOT / "docs").glob("*.md")))  # where published tables live


@dataclass
class Table:
    """One Markdown table: its file, the text since the previous table or heading, header, rows, first row's line."""

    file: Path
    before: str
    header: list[str]
    rows: list[list[str]]
    first_line: int = 0


def tables(path: Path) -> list[Table]:
    """Every Markdown table of `path`, in order."""
    found, before, lines = [], [], path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("|") and index + 1 < len(lines) and re.match(r"^\|[-| ]+\|$", lines[index + 1]):
            header = cells(line)
            rows, index = [], index + 2
            first = index
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(cells(lines[index]))
                index += 1
            found.append(Table(path, "\n".join(before), header, rows, first))
            before = []
            continue
        before = [] if line.startswith("#") else [*before, line]
        index += 1
    return found


def cells(line: str) -> list[str]:
    """The stripped cells of one Markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def measured_kind(table: Table) -> str | None:
    """The CPU kind the text above `table` names (`cpu kind `intel-amx``), or None."""
    found = re.findall(r"cpu kind `([\w.-]+)`", table.before)
    return found[-1] if found else None


def stale_cell(name: str, published: str, fresh: str) -> str | None:
    """Why a published cell does not hold against a fresh run's (None when it holds): they must be equal.

    Only cells that can be equal are compared: every cell on the CPU kind its table names, and float rows
    (and columns no CPU kind changes, such as size) on any kind. A quantized or bf16 figure is a
    measurement on one kind (one sentence translated differently moves BLEU on 100 sentences by about 0.5),
    so on another kind it is not compared (`comparable` says which rows are), never bounded by a tolerance.
    """
    return None if published == fresh else f"published {published}, fresh {fresh}"


def float_command(command: str) -> bool:
    """Whether a table row's command runs the model in float32 (no number-format plugin), so that its figures
    are the same on every CPU kind."""
    return "--quant" not in shlex.split(command)


def comparable(table: Table, float_row: bool, here: str) -> bool:
    """Whether a row of `table` is compared cell by cell on a machine of kind `here`."""
    return float_row or measured_kind(table) == here


def command_tables(paths: tuple[Path, ...] = PAGES) -> list[Table]:
    """The tables whose first column is `command`, in every page of `paths`."""
    return [t for path in paths for t in tables(path) if t.header[0] == "command"]


def deterministic_cells(report: dict[str, Any]) -> dict[str, str]:
    """A report's deterministic figures, formatted as the published columns print them."""
    metrics = report["metrics"]
    return {"size MB": f"{metrics['size_mb']:.2f}", "params": f"{metrics['parameters']:,}",
            "parameters": f"{metrics['parameters']:,}", "BLEU": f"{metrics['bleu']['score']:.2f}",
            "chrF": f"{metrics['chrf']['score']:.2f}", "source WER": f"{metrics['source_wer']:.1f} %",
            "dtype": report["conditions"]["dtype"]}


def run_command(command: str, out: Path) -> dict[str, Any]:
    """Run `runner ...` in this process with `--out`; returns the report it wrote."""
    from typer.testing import CliRunner

    from runner.cli import app

    result = CliRunner().invoke(app, [*shlex.split(command)[1:], "--no-progress", "--out", str(out)])
    if result.exit_code != 0:
        raise RuntimeError(f"{command}: exit {result.exit_code}: {result.output.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())


def row_cells(header: list[str], row: list[str], report: dict[str, Any], first: dict[str, Any]) -> list[str]:
    """`row` with every column this module knows recomputed from `report` (`first`: the table's first row)."""
    latency, base = report["metrics"]["latency"], first["metrics"]["latency"]
    known = {**deterministic_cells(report),
             "latency mean s (p90)": f"{latency['mean']:.3f} ({latency['p90']:.3f})",
             "latency mean s": f"{latency['mean']:.3f}", "RTF": f"{latency['rtf']:.3f}",
             "vs fp32": f"{latency['mean'] / base['mean']:.2f}x"}
    return [known.get(name, cell) for name, cell in zip(header, row)]


def main(argv: list[str] | None = None) -> int:
    from runner.environment import cpu_kind

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the rows, do not rewrite the pages")
    args = parser.parse_args(argv)
    here = cpu_kind()
    lines = {path: path.read_text(encoding="utf-8").splitlines() for path in PAGES}
    reports: dict[str, dict[str, Any]] = {}
    ours = [t for t in command_tables() if measured_kind(t) == here]
    for table in command_tables():
        if measured_kind(table) != here:
            print(f"{table.file.name} line {table.first_line}: measured on cpu kind {measured_kind(table)}, not "
                  f"this machine's `{here}`: left as it is", file=sys.stderr)
    if not ours:
        print(f"no command table names cpu kind `{here}`: copy the tables, name `cpu kind `{here}`` above the "
              f"copies and run again (the rows below are this machine's)", file=sys.stderr)
        args.dry_run, ours = True, command_tables()
    with tempfile.TemporaryDirectory() as work:
        for table in ours:
            for offset, row in enumerate(table.rows):
                command = row[0].strip("`")
                if command not in reports:
                    reports[command] = run_command(command, Path(work) / f"{len(reports)}.json")
                first = reports[table.rows[0][0].strip("`")]
                new = "| " + " | ".join(row_cells(table.header, row, reports[command], first)) + " |"
                lines[table.file][table.first_line + offset] = new
                print(new, flush=True)
    if not args.dry_run:
        for path in {table.file for table in ours}:
            path.write_text("\n".join(lines[path]) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
