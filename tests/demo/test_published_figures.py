"""Every deterministic figure the README and docs publish for the embedded default is re-measured here.

Each table of the README and docs/ whose first column is `command` is run command by command (`runner
translate ...` in-process, with `--out`), and the sweep tables (docs/sweeps.md and docs/sweep-hop.md) against a fresh
`runner sweep configs/hop.yaml`. Size, parameters, BLEU, chrF, source WER and ΔBLEU (p) must be what the
files say, so a change that moves them fails here until the tables are regenerated. Latency is not
deterministic: every table with a latency column must name the commit it was measured at.

Every table names the CPU kind it was measured on. Float rows are the same on every kind and are
compared everywhere; quantized and bf16 rows are a measurement on one kind (MKL, oneDNN and fbgemm pick
their kernels by instruction set, and a last-bit difference before a rounding to the int8 grid can change
a sentence), so they are decoded and compared only on the kind their table names; elsewhere the test
prints what it can measure of them for free and says which rows it left.

This module also holds the headline regression: int8 and bf16 keep BLEU on the shipped model, on tst-COMMON
and on the held-out-engine tst-HE (the seed lost 20.8 BLEU with dynamic int8), on every CPU kind, judged by
a paired bootstrap interval of the BLEU difference (`runner.metrics.paired`), not a bare threshold.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from benchmarks.readme_tables import (PAGES, Table, command_tables, comparable, deterministic_cells, float_command,
                                      measured_kind, stale_cell, tables)
from conftest import KEEPS_BLEU_MARGIN, Decodes
from runner.cli import app
from runner.defaults import REPO_ROOT
from runner.environment import cpu_kind
from runner.metrics.paired import paired_difference

pytestmark = pytest.mark.slow

SWEEP_DOCS = (REPO_ROOT / "docs" / "sweeps.md", REPO_ROOT / "docs" / "sweep-hop.md")
SWEEP_COMMAND = "runner sweep configs/hop.yaml"
SPLITS = {"tst-COMMON": "", "tst-HE": " --split tst-HE"}  # the command suffix that selects each split
SCHEMES = ("dynamic-int8", "static-int8", "bf16")


def lean_batched(split: str, scheme: str | None = None) -> str:
    """The lean engine, batch 8: ESPnet's translations at fp32 (tested here), each utterance what it gets
    alone for every scheme (tests/test_batch.py), so the fast way to measure a scheme on the whole split."""
    return "runner translate --search lean --batch-size 8" + (f" --quant {scheme}" if scheme else "") + SPLITS[split]


def _say(capsys: pytest.CaptureFixture[str], lines: list[str]) -> None:
    if lines:
        with capsys.disabled():
            print("\n" + "\n".join(lines))


def sweep_tables() -> list[Table]:
    return [t for path in SWEEP_DOCS for t in tables(path) if t.header[:2] == ["config", "Q"]]


@pytest.fixture(scope="module")
def fresh_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`runner sweep configs/hop.yaml` (the lean engine) in batches of 16, which give each utterance what it gets
    alone for every scheme (tests/test_batch.py): the published rows' translations in a third of the time.
    Where no sweep table names this CPU kind, its float rows only (`grid.quant: [none]`, the rows that can be
    compared). Rows by their config label."""
    import json

    out = tmp_path_factory.mktemp("sweep")
    grid = yaml.safe_load(Path(shlex.split(SWEEP_COMMAND)[2]).read_text())
    assert grid["search"] == "lean"  # what the batches stand in for
    grid["batch_size"] = 16
    if not any(measured_kind(t) == cpu_kind() for t in sweep_tables()):
        grid["grid"]["quant"] = ["none"]
    config = out / "hop-batched.yaml"
    config.write_text(yaml.safe_dump(grid))
    result = CliRunner().invoke(app, ["sweep", str(config), "--out", str(out / "hop"), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "hop" / "results.json").read_text())["rows"]
    return {f"hop {row['hop']}" + ("" if row["quant"] == "none" else f" + {row['quant']}"): row for row in rows}


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


def _lean_batch_one(command: str) -> str | None:
    """For a `runner translate --search lean ...` row, the batched command with the same translations."""
    lean = "runner translate --search lean"
    return command.replace(lean, lean + " --batch-size 8", 1) if command.startswith(lean + " ") else None


def test_readme_command_tables_match_a_fresh_run(decodes: Decodes, capsys: pytest.CaptureFixture[str]) -> None:
    """Every row that can be compared here (`readme_tables.comparable`) equals a fresh run of its command; of
    the others, the lean engine's rows are printed beside the batched decode with the same translations.

    A lean row is decoded in batches of 8: each utterance gets what it gets alone, for every scheme
    (tests/test_batch.py), so its size, parameters, BLEU, chrF and WER are the row's; the batch-1 decodes
    are compared with ESPnet's at fp32 by test_the_lean_engine_and_its_batches_give_espnets_translations."""
    stale, said, here = [], [], cpu_kind()
    for table in command_tables():
        left, measured = [], []
        for row in table.rows:
            command = row[0].strip("`")
            batched = _lean_batch_one(command)
            if comparable(table, float_command(command), here):
                fresh = deterministic_cells(decodes.report(batched or command))
                stale += [f"{row[0]} {name}: {why}" for name, cell in zip(table.header, row)
                          if name in fresh and (why := stale_cell(name, cell, fresh[name]))]
            elif batched:
                fresh = deterministic_cells(decodes.report(batched))
                moved = [f"{name} {cell} -> {fresh[name]}" for name, cell in zip(table.header, row)
                         if name in fresh and cell != fresh[name]]
                measured.append(f"  {command}: {', '.join(moved) or 'every cell equal'} (measured here, batched)")
            else:
                left.append(command)
        if measured_kind(table) != here:
            said += [f"{table.file.name} line {table.first_line}: measured on cpu kind {measured_kind(table)}, this "
                     f"is {here}: float rows compared; not decoded here: {'; '.join(left) or 'none'}", *measured]
    _say(capsys, said)
    assert not stale, "regenerate the published tables (python -m benchmarks.readme_tables):\n" + "\n".join(stale)


def test_sweep_tables_match_a_fresh_sweep(fresh_sweep: dict[str, dict[str, Any]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    stale, said = [], []
    for table in sweep_tables():
        for row in table.rows:
            cells = dict(zip(table.header, row))
            if not comparable(table, cells["Q"] == "-", cpu_kind()):
                continue
            fresh_row = fresh_sweep[cells["config"]]
            delta = "-" if fresh_row["bleu_delta"] is None else (
                f"{fresh_row['bleu_delta']:+.2f} ({fresh_row['p_value']:.3f})")
            fresh = {"size MB": f"{fresh_row['size_mb']:.2f}", "BLEU": f"{fresh_row['bleu']:.2f}", "ΔBLEU (p)": delta}
            stale += [f"{table.file.name}: {cells['config']} {name}: {why}" for name, value in fresh.items()
                      if name in cells and (why := stale_cell(name, cells[name], value))]
        if measured_kind(table) != cpu_kind():
            said.append(f"{table.file.name} line {table.first_line}: measured on cpu kind {measured_kind(table)}, "
                        f"this is {cpu_kind()}: the float rows compared, the quantized rows not swept here")
    _say(capsys, said)
    assert not stale, "regenerate the sweep tables:\n" + "\n".join(stale)


def test_the_comparison_rule_compares_float_rows_everywhere_and_the_rest_on_their_kind() -> None:
    table = command_tables()[0]
    kind = measured_kind(table)
    assert kind and comparable(table, False, kind) and comparable(table, True, "amd-avx2")
    assert not comparable(table, False, f"{kind}-capped-avx2")  # an imitation of another kind is neither
    assert float_command("runner translate --config configs/fast-search.yaml --split tst-HE")
    assert not float_command("runner translate --search lean --quant bf16")
    assert stale_cell("BLEU", "84.13", "84.10") and stale_cell("BLEU", "84.13", "84.13") is None


def test_sweep_rows_equal_the_translate_commands(tmp_path: Path) -> None:
    """A sweep's quantized rows are what `runner translate` gives with the same plugins (5 utterances, static int8
    calibrated on 8: the same code paths on any kind, whichever tables it can compare)."""
    import json

    config = yaml.safe_load((REPO_ROOT / "configs" / "hop.yaml").read_text())
    calibrated = {"name": "static-int8", "calibration_split": "dev", "calibration_size": 8}
    config.update(limit=5, plugins=[calibrated], grid={"hop": [160], "quant": ["dynamic-int8", "static-int8"]})
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "small.yaml"), "--out", str(tmp_path / "s"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = {row["quant"]: row for row in json.loads((tmp_path / "s" / "results.json").read_text())["rows"]}
    for quant, plugin in (("dynamic-int8", "dynamic-int8"), ("static-int8", calibrated)):
        run = tmp_path / f"{quant}-run.yaml"
        run.write_text(yaml.safe_dump({"plugins": [plugin], "limit": 5, "decode": config["decode"],
                                       "search": config.get("search", "espnet")}))
        out = tmp_path / f"{quant}.json"
        done = CliRunner().invoke(app, ["translate", "--config", str(run), "--no-progress", "--out", str(out)])
        assert done.exit_code == 0, done.output
        assert [u["hypothesis"] for u in json.loads(out.read_text())["utterances"]] == rows[quant]["hypotheses"], quant


@pytest.mark.parametrize("split", SPLITS)
def test_the_lean_engine_and_its_batches_give_espnets_translations(decodes: Decodes, split: str) -> None:
    """fp32: the 100 hypotheses and transcripts of ESPnet's search, identical, alone and in batches of 8."""
    espnet = decodes.report(f"runner translate{SPLITS[split]}")
    assert espnet["data"]["split"] == split and espnet["conditions"]["search"] == "espnet"
    for command in (f"runner translate --search lean{SPLITS[split]}", lean_batched(split)):
        lean = decodes.report(command)
        assert lean["conditions"]["search"] == "lean" and len(lean["utterances"]) == 100
        for field in ("hypothesis", "source_hypothesis"):
            assert [u.get(field) for u in lean["utterances"]] == [u.get(field) for u in espnet["utterances"]], \
                (command, field)


def _hypotheses(report: dict[str, Any]) -> list[str]:
    return [u["hypothesis"] for u in report["utterances"]]


@pytest.mark.parametrize("split", SPLITS)
def test_int8_and_bf16_keep_bleu_on_the_shipped_model(decodes: Decodes, split: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Every scheme on the lean engine (batched), and every other quantized decode of the split this session
    made (ESPnet's search, on the kind the tables name), keeps fp32's BLEU: the paired bootstrap interval of
    the difference reaches -KEEPS_BLEU_MARGIN. Each difference is printed with its interval."""
    fp32 = decodes.report(lean_batched(split))
    references = [u["reference"] for u in fp32["utterances"]]
    for scheme in SCHEMES:
        decodes.report(lean_batched(split, scheme))
    checked, lost = [], []
    for command, report in list(decodes.reports.items()):
        words = shlex.split(command)
        if float_command(command) or report["data"]["split"] != split or "--limit" in words or "--model" in words:
            continue
        difference = paired_difference(_hypotheses(fp32), _hypotheses(report), references)
        checked.append(f"  {split}: {command}: {difference.line()}")
        if not difference.holds(KEEPS_BLEU_MARGIN):
            lost.append(checked[-1])
    _say(capsys, checked)
    assert len(checked) >= len(SCHEMES) and not lost, "\n".join(lost)
