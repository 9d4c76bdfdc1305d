"""Every deterministic figure the README and docs publish for the embedded default is re-measured here.

Each table of the README and docs/ whose first column is `command` is run command by command (`runner
translate ...` in-process, with `--out`), and the sweep tables (docs/sweeps.md and docs/sweep-hop.md) against a fresh
`runner sweep configs/hop.yaml`. Size, parameters, BLEU, chrF, source WER and ΔBLEU (p) must be
what the files say, so a change that moves them fails here until the tables are regenerated.
Latency is not deterministic: every table with a latency column must name the commit it was
measured at. Every table names the CPU kind it was measured on: on a machine of that kind every cell
must be equal; on another kind (quantized and bf16 figures move in their last digits between an Intel
Xeon with AMX and an AMD EPYC) float rows must still be equal, and the others within
`benchmarks.readme_tables.ACROSS_KINDS`, which the test says in its output. This module also holds the headline regression: int8 and bf16 keep BLEU on the
shipped model, on tst-COMMON and on the held-out-engine tst-HE (the seed lost 20.8 BLEU with dynamic int8).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest
from typer.testing import CliRunner

from benchmarks.readme_tables import (ACROSS_KINDS, PAGES, Table, command_tables, deterministic_cells, measured_kind,
                                      run_command, stale_cell, tables)
from runner.cli import app
from runner.defaults import REPO_ROOT
from runner.environment import cpu_kind

SWEEP_DOCS = (REPO_ROOT / "docs" / "sweeps.md", REPO_ROOT / "docs" / "sweep-hop.md")
SWEEP_COMMAND = "runner sweep configs/hop.yaml"
INT8_BLEU_TOLERANCE = 0.5


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
            if command not in reports:
                reports[command] = run_command(command, out / f"{len(reports)}.json")
    return reports


def test_the_docs_publish_command_and_sweep_tables() -> None:
    assert len(command_tables()) >= 2 and sum(len(t.rows) for t in command_tables()) >= 7
    assert len(sweep_tables()) == 2 and all(len(t.rows) == 16 for t in sweep_tables())
    assert all(SWEEP_COMMAND in t.before or t.file != SWEEP_DOCS[0] for t in sweep_tables())


def test_latency_figures_name_the_commit_they_were_measured_at() -> None:
    """In the text above the table or, for a page a command generated, in its environment block."""
    for path in PAGES:
        generated = re.search(r"^runner_commit: [0-9a-f]{7,}", path.read_text(encoding="utf-8"), re.M)
        for table in tables(path):
            if any("latency" in cell for cell in table.header):
                assert re.search(r"commit [0-9a-f]{7,}", table.before) or generated, (path, table.header)


def _exact_here(table: Table, capsys: pytest.CaptureFixture[str]) -> bool:
    """Whether `table` was measured on this machine's CPU kind (else the test says how it compares)."""
    kind, here = measured_kind(table), cpu_kind()
    assert kind, f"{table.file.name} line {table.first_line}: the text above the table names no `cpu kind`"
    if kind != here:
        with capsys.disabled():
            print(f"\n{table.file.name} line {table.first_line}: measured on cpu kind {kind}, this is {here}: "
                  f"float rows compared exactly, the others within {ACROSS_KINDS}")
    return kind == here


def test_every_published_table_names_its_cpu_kind() -> None:
    """Tables of measured figures (README and docs) name the CPU kind and its flags in the text above them or,
    for a generated docs page, in its environment block."""
    measured = ("BLEU", "latency", "utterances/s", "requests/s", "size ratio", "ms/step", "latency ratio, 2 threads")
    missing = []
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        for table in tables(path):
            if not any(m in cell for cell in table.header for m in measured):
                continue
            if measured_kind(table) is None and not re.search(r"^cpu_kind: [\w.-]+$", text, re.M):
                missing.append(f"{path.name} line {table.first_line}: {table.header[:3]}")
    assert not missing, "name the cpu kind these were measured on:\n" + "\n".join(missing)


def test_readme_command_tables_match_a_fresh_run(fresh_commands: dict[str, dict[str, Any]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    stale = []
    for table in command_tables():
        exact_here = _exact_here(table, capsys)
        for row in table.rows:
            command = row[0].strip("`")
            fresh = deterministic_cells(fresh_commands[command])
            for name, cell in zip(table.header, row):
                why = name in fresh and stale_cell(name, cell, fresh[name], exact_here or "--quant" not in command)
                if why:
                    stale.append(f"{row[0]} {name}: {why}")
    assert not stale, "regenerate the published tables (python -m benchmarks.readme_tables):\n" + "\n".join(stale)


def test_sweep_tables_match_a_fresh_sweep(fresh_sweep: dict[str, dict[str, Any]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    stale = []
    for table in sweep_tables():
        exact_here = _exact_here(table, capsys)
        for row in table.rows:
            cells = dict(zip(table.header, row))
            fresh_row = fresh_sweep[cells["config"]]
            delta = "-" if fresh_row["bleu_delta"] is None else (
                f"{fresh_row['bleu_delta']:+.2f} ({fresh_row['p_value']:.3f})")
            fresh = {"size MB": f"{fresh_row['size_mb']:.2f}", "BLEU": f"{fresh_row['bleu']:.2f}", "ΔBLEU (p)": delta}
            for name, value in fresh.items():
                why = name in cells and stale_cell(name, cells[name], value, exact_here or cells["Q"] == "-")
                if why:
                    stale.append(f"{table.file.name}: {cells['config']} {name}: {why}")
    assert not stale, "regenerate the sweep tables:\n" + "\n".join(stale)


def test_figures_compare_exactly_on_their_kind_and_within_the_tolerance_elsewhere() -> None:
    """The rule the two tests above apply, on the EPYC figures issue #30 reported for Xeon-measured rows."""
    assert stale_cell("BLEU", "84.13", "84.10", exact=False) is None  # lean bf16 on the EPYC
    assert stale_cell("BLEU", "84.13", "84.10", exact=True)  # ... but not on the kind that measured it
    assert stale_cell("ΔBLEU (p)", "-2.40 (0.069)", "-2.26 (0.081)", exact=False) is None  # hop 250 + dynamic-int8
    assert stale_cell("source WER", "21.2 %", "21.3 %", exact=False) is None
    assert stale_cell("BLEU", "5.95", "5.30", exact=False)  # a real change is still caught
    assert stale_cell("size MB", "6.77", "6.78", exact=False)  # size depends on no CPU kind
    assert stale_cell("BLEU", "84.13", "84.13", exact=True) is None


def test_sweep_rows_equal_the_translate_commands(fresh_sweep: dict[str, dict[str, Any]],
                                                 fresh_commands: dict[str, dict[str, Any]]) -> None:
    for quant in ("dynamic-int8", "dynamic-fp16", "static-int8"):
        command = fresh_commands[f"runner translate --quant {quant}"]
        row = fresh_sweep[f"hop 160 + {quant}"]
        assert [u["hypothesis"] for u in command["utterances"]] == row["hypotheses"], quant


SPLITS = {"tst-COMMON": "", "tst-HE": " --split tst-HE"}  # the command suffix that selects each split


def _assert_keeps_bleu(split: str, scheme: str, bleu: float, fp32: float) -> None:
    """No scheme loses more than the tolerance on either split; on tst-COMMON none moves more either way.

    On tst-HE (58 BLEU, 21 % source WER) dynamic int8 changes 10 of 100 translations and nets +1.71 (paired
    bootstrap p 0.029, `runner sweep configs/held-out.yaml`; docs/plugins.md, "Plugins on the embedded default model"):
    a gain outside the two-sided band, not a loss.
    """
    assert bleu - fp32 >= -INT8_BLEU_TOLERANCE, (split, scheme, bleu, fp32)
    if split == "tst-COMMON":
        assert abs(bleu - fp32) <= INT8_BLEU_TOLERANCE, (split, scheme, bleu, fp32)


@pytest.mark.parametrize("split", SPLITS)
def test_int8_and_bf16_keep_bleu_on_the_shipped_model(fresh_commands: dict[str, dict[str, Any]], split: str) -> None:
    suffix = SPLITS[split]
    fp32 = fresh_commands[f"runner translate{suffix}"]
    assert fp32["data"]["split"] == split
    for scheme in ("dynamic-int8", "static-int8", "bf16"):
        bleu = fresh_commands[f"runner translate --quant {scheme}{suffix}"]["metrics"]["bleu"]["score"]
        _assert_keeps_bleu(split, scheme, bleu, fp32["metrics"]["bleu"]["score"])


@pytest.mark.parametrize("split", SPLITS)
def test_the_lean_engine_gives_espnets_translations_and_keeps_int8_bleu(
        fresh_commands: dict[str, dict[str, Any]], split: str) -> None:
    """fp32 with the lean engine: the 100 hypotheses and transcripts of ESPnet's search, identical, on both splits."""
    suffix = SPLITS[split]
    espnet, lean = fresh_commands[f"runner translate{suffix}"], fresh_commands[f"runner translate --search lean{suffix}"]
    assert lean["conditions"]["search"] == "lean" and espnet["conditions"]["search"] == "espnet"
    assert len(lean["utterances"]) == 100
    for field in ("hypothesis", "source_hypothesis"):
        assert [u.get(field) for u in lean["utterances"]] == [u.get(field) for u in espnet["utterances"]], field
    for scheme in ("dynamic-int8", "static-int8") + (("bf16",) if split == "tst-COMMON" else ()):
        bleu = fresh_commands[f"runner translate --search lean --quant {scheme}{suffix}"]["metrics"]["bleu"]["score"]
        _assert_keeps_bleu(split, scheme, bleu, espnet["metrics"]["bleu"]["score"])
