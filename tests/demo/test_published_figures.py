"""Every deterministic figure the README and docs publish for the embedded default is re-measured here.

Each README table whose first column is `command` is run command by command (`runner translate ...`
in-process, with `--out`), and the sweep tables (README and docs/sweep-hop.md) against a fresh
`runner sweep configs/hop.yaml`. Size, parameters, BLEU, chrF, source WER and ΔBLEU (p) must be
what the files say, so a change that moves them fails here until the tables are regenerated.
Latency is not deterministic: every table with a latency column must name the commit it was
measured at. This module also holds the headline regression: int8 and bf16 keep BLEU on the
shipped model (the seed lost 20.8 BLEU with dynamic int8).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from runner.cli import app
from runner.defaults import REPO_ROOT

README = REPO_ROOT / "README.md"
SWEEP_DOCS = (README, REPO_ROOT / "docs" / "sweep-hop.md")
SWEEP_COMMAND = "runner sweep configs/hop.yaml"
INT8_BLEU_TOLERANCE = 0.5


@dataclass
class Table:
    file: Path
    before: str  # the text between the previous table (or heading) and this one
    header: list[str]
    rows: list[list[str]]


def tables(path: Path) -> list[Table]:
    found, before, lines = [], [], path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("|") and index + 1 < len(lines) and re.match(r"^\|[-| ]+\|$", lines[index + 1]):
            header = _cells(line)
            rows, index = [], index + 2
            while index < len(lines) and lines[index].startswith("|"):
                rows.append(_cells(lines[index]))
                index += 1
            found.append(Table(path, "\n".join(before), header, rows))
            before = []
            continue
        before = [] if line.startswith("#") else [*before, line]
        index += 1
    return found


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("%", "").split()[0])


def command_tables() -> list[Table]:
    return [t for t in tables(README) if t.header[0] == "command"]


def sweep_tables() -> list[Table]:
    return [t for path in SWEEP_DOCS for t in tables(path) if t.header[:2] == ["config", "Q"]]


@pytest.fixture(scope="module")
def fresh_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sweep") / "hop"
    args = shlex.split(SWEEP_COMMAND)[1:] + ["--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return {row["label"]: row for row in json.loads((out / "results.json").read_text())["rows"]}


@pytest.fixture(scope="module")
def fresh_commands(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("commands")
    reports = {}
    for table in command_tables():
        for row in table.rows:
            command = row[0].strip("`")
            if command in reports:
                continue
            report = out / f"{len(reports)}.json"
            result = CliRunner().invoke(app, [*shlex.split(command)[1:], "--no-progress", "--out", str(report)])
            assert result.exit_code == 0, f"{command}: {result.output}"
            reports[command] = json.loads(report.read_text())
    return reports


def test_the_readme_publishes_command_and_sweep_tables() -> None:
    assert len(command_tables()) >= 2 and sum(len(t.rows) for t in command_tables()) >= 7
    assert len(sweep_tables()) == 2 and all(len(t.rows) == 16 for t in sweep_tables())
    assert all(SWEEP_COMMAND in t.before or t.file != README for t in sweep_tables())


def test_latency_figures_name_the_commit_they_were_measured_at() -> None:
    for path in (README, *SWEEP_DOCS[1:]):
        for table in tables(path):
            if any("latency" in cell for cell in table.header):
                assert re.search(r"commit [0-9a-f]{7,}", table.before), (path, table.header)


def test_readme_command_tables_match_a_fresh_run(fresh_commands: dict[str, dict[str, Any]]) -> None:
    stale = []
    for table in command_tables():
        for row in table.rows:
            report = fresh_commands[row[0].strip("`")]
            metrics = report["metrics"]
            fresh = {"size MB": f"{metrics['size_mb']:.2f}", "params": f"{metrics['parameters']:,}",
                     "parameters": f"{metrics['parameters']:,}", "BLEU": f"{metrics['bleu']['score']:.2f}",
                     "chrF": f"{metrics['chrf']['score']:.2f}", "source WER": f"{metrics['source_wer']:.1f} %",
                     "dtype": report["conditions"]["dtype"]}
            for name, cell in zip(table.header, row):
                if name in fresh and cell != fresh[name]:
                    stale.append(f"{row[0]} {name}: README {cell}, fresh run {fresh[name]}")
    assert not stale, "regenerate the README's tables:\n" + "\n".join(stale)


def test_sweep_tables_match_a_fresh_sweep(fresh_sweep: dict[str, dict[str, Any]]) -> None:
    stale = []
    for table in sweep_tables():
        for row in table.rows:
            cells = dict(zip(table.header, row))
            fresh_row = fresh_sweep[cells["config"]]
            delta = "-" if fresh_row["bleu_delta"] is None else (
                f"{fresh_row['bleu_delta']:+.2f} ({fresh_row['p_value']:.3f})")
            fresh = {"size MB": f"{fresh_row['size_mb']:.2f}", "BLEU": f"{fresh_row['bleu']:.2f}", "ΔBLEU (p)": delta}
            for name, value in fresh.items():
                if name in cells and cells[name] != value:
                    stale.append(f"{table.file.name}: {cells['config']} {name}: published {cells[name]}, fresh {value}")
    assert not stale, "regenerate the sweep tables:\n" + "\n".join(stale)


def test_sweep_rows_equal_the_translate_commands(fresh_sweep: dict[str, dict[str, Any]],
                                                 fresh_commands: dict[str, dict[str, Any]]) -> None:
    for quant in ("dynamic-int8", "dynamic-fp16", "static-int8"):
        command = fresh_commands[f"runner translate --quant {quant}"]
        row = fresh_sweep[f"hop 160 + {quant}"]
        assert [u["hypothesis"] for u in command["utterances"]] == row["hypotheses"], quant


def test_int8_and_bf16_keep_bleu_on_the_shipped_model(fresh_commands: dict[str, dict[str, Any]]) -> None:
    fp32 = fresh_commands["runner translate"]["metrics"]["bleu"]["score"]
    for scheme in ("dynamic-int8", "static-int8", "bf16"):
        bleu = fresh_commands[f"runner translate --quant {scheme}"]["metrics"]["bleu"]["score"]
        assert abs(bleu - fp32) <= INT8_BLEU_TOLERANCE, (scheme, bleu, fp32)


def test_the_lean_engine_gives_espnets_translations_and_keeps_int8_bleu(
        fresh_commands: dict[str, dict[str, Any]]) -> None:
    """fp32 with the lean engine: the 100 demo hypotheses and transcripts of ESPnet's search, identical."""
    espnet, lean = fresh_commands["runner translate"], fresh_commands["runner translate --search lean"]
    assert lean["conditions"]["search"] == "lean" and espnet["conditions"]["search"] == "espnet"
    assert len(lean["utterances"]) == 100
    for field in ("hypothesis", "source_hypothesis"):
        assert [u.get(field) for u in lean["utterances"]] == [u.get(field) for u in espnet["utterances"]], field
    fp32 = espnet["metrics"]["bleu"]["score"]
    for scheme in ("dynamic-int8", "static-int8", "bf16"):
        bleu = fresh_commands[f"runner translate --search lean --quant {scheme}"]["metrics"]["bleu"]["score"]
        assert abs(bleu - fp32) <= INT8_BLEU_TOLERANCE, (scheme, bleu, fp32)
