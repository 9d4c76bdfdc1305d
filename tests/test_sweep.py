"""`runner sweep` on a real tiny ESPnet model: rows, resume, interruption, outputs that agree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_corpus
from runner.cli import app
from runner.errors import RunnerError
from runner.runner import Runner
from runner.sweep import Sweep, SweepConfig, read_rows

CLI = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep_yaml(tiny_exp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    corpus = write_corpus(root / "mustc")
    path = root / "grid.yaml"
    path.write_text(f"model: {tiny_exp}\ndata: {corpus}\nlimit: 3\nthreads: 1\nwarmup: 1\n"
                    "decode: {beam_size: 2, asr_beam_size: 2}\n"
                    "grid:\n  hop: [160, 320]\n  quant: [none, dynamic-int8]\n")
    return path


def test_two_by_two_sweep_writes_agreeing_outputs(sweep_yaml: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 4 and {(r["hop"], r["quant"]) for r in rows} == {
        (160, "none"), (160, "dynamic-int8"), (320, "none"), (320, "dynamic-int8")}
    document = json.loads((out / "results.json").read_text())
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    summary = (out / "summary.md").read_text()
    assert len(document["rows"]) == len(table) == 4
    for row, line in zip(document["rows"], table):
        assert float(line["bleu"]) == pytest.approx(row["bleu"])
        assert float(line["latency_mean"]) == pytest.approx(row["latency_mean"])
        assert f"| {row['label']} |" in summary and f"{row['latency_mean']:.3f}" in summary
        assert f"{row['size_mb']:.2f}" in summary
    quantized = next(r for r in document["rows"] if r["quant"] == "dynamic-int8" and r["hop"] == 160)
    float_row = next(r for r in document["rows"] if r["quant"] == "none" and r["hop"] == 160)
    assert quantized["bleu_delta"] == pytest.approx(quantized["bleu"] - float_row["bleu"])
    assert 0.0 < quantized["p_value"] <= 1.0 and float_row["bleu_delta"] is None
    assert quantized["size_mb"] < float_row["size_mb"] and quantized["parameters"] == float_row["parameters"]
    for picture in ("bleu_latency.png", "size.png"):
        assert (out / picture).read_bytes()[:8] == PNG_MAGIC
    env = json.loads((out / "env.json").read_text())
    assert {"cpu", "cpu_flags", "threads", "versions", "int8_backend", "runner_commit", "model_content_hash",
            "data_content_hash"} <= set(env)


def test_sweep_rows_match_a_single_translate_run(sweep_yaml: Path, tmp_path: Path) -> None:
    config = SweepConfig.from_yaml(sweep_yaml)
    config.grid = {"hop": [320], "quant": ["dynamic-int8"]}
    rows = Sweep(config, tmp_path / "one", progress=False).run()
    from runner.decode import DecodeOptions

    single = Runner(config.run.model, DecodeOptions(beam_size=2, asr_beam_size=2), threads=1,
                    plugins=[{"name": "hop", "hop_length": 320}, "dynamic-int8"])
    report = single.evaluate(config.run.data, limit=3)
    assert rows[0]["hypotheses"] == report.hypotheses() and rows[0]["bleu"] == report.bleu.score


def test_resume_skips_finished_rows_and_an_interrupted_sweep_keeps_them(
        sweep_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "interrupted"
    original = Runner.evaluate_preloaded
    calls = {"n": 0}

    def interrupt_third(self, preloaded, options):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, preloaded, options)

    monkeypatch.setattr(Runner, "evaluate_preloaded", interrupt_third)
    result = CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(out), "--no-progress"])
    assert result.exit_code == 130 and "--resume" in result.stderr
    kept = read_rows(out / "results.jsonl")
    assert len(kept) == 2 and (out / "summary.md").is_file()

    monkeypatch.setattr(Runner, "evaluate_preloaded", original)
    assert CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(out), "--no-progress"]).exit_code == 2
    counted = {"n": 0}

    def count(self, preloaded, options):  # type: ignore[no-untyped-def]
        counted["n"] += 1
        return original(self, preloaded, options)

    monkeypatch.setattr(Runner, "evaluate_preloaded", count)
    result = CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert counted["n"] == 2  # only the two unfinished runs
    rows = read_rows(out / "results.jsonl")
    assert len(rows) == 4 and [r["config_hash"] for r in rows[:2]] == [r["config_hash"] for r in kept]


def test_a_run_that_raises_is_a_failed_row_with_its_exception_type(
        sweep_yaml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Runner.evaluate_preloaded
    calls = {"n": 0}

    def break_second(self, preloaded, options):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("shapes (5, 3) and (4, 3) do not align\nsecond line")
        return original(self, preloaded, options)

    monkeypatch.setattr(Runner, "evaluate_preloaded", break_second)
    result = CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1 and "1 run(s) failed" in result.stderr
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 4 and len(failed) == 1
    assert failed[0]["reason"] == "shapes (5, 3) and (4, 3) do not align" and failed[0]["error_type"] == "ValueError"
    assert "failed: ValueError: shapes (5, 3)" in (tmp_path / "out" / "summary.md").read_text()


def test_repeats_are_interleaved_and_report_spread(sweep_yaml: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = SweepConfig.from_yaml(sweep_yaml)
    config.grid, config.repeats = {"hop": [160, 320]}, 2
    order = []
    original = Runner.evaluate_preloaded

    def record(self, preloaded, options):  # type: ignore[no-untyped-def]
        order.append(self.bundle.summary()["frontend"]["hop_length"])
        return original(self, preloaded, options)

    monkeypatch.setattr(Runner, "evaluate_preloaded", record)
    rows = Sweep(config, tmp_path / "repeats", progress=False).run()
    assert order == [160, 320, 160, 320]
    for row in rows:
        assert row["repeats"] == 2 and len(row["repeat_means"]) == 2 and row["cv"] is not None
        assert min(row["repeat_means"]) <= row["latency_mean"] <= max(row["repeat_means"])
    assert "| CV |" in (tmp_path / "repeats" / "summary.md").read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid: {hop: [160]}\nmodle: x\n", "unknown key(s) ['modle']"),
        ("grid: {hop: []}\n", "grid must map keys to non-empty lists"),
        ("grid: {quant: [none, dynamic-int9]}\n", "unknown plugin 'dynamic-int9'"),
        ("grid: {hop: [0]}\n", "hop_length must be positive"),
        ("grid: {beam: [1]}\n", "grid key 'beam' is not hop, quant, search (engine) or <plugin>.<option>"),
        ("grid: {hop: [160]\n", "invalid YAML"),
        ("repeats: 0\ngrid: {hop: [160]}\n", "repeats must be a positive integer"),
        ("grid: {search: [espnet, fast]}\n", "grid search: unknown search engine 'fast'; available: espnet, lean, onnxruntime"),
    ],
)
def test_invalid_sweep_yaml_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RunnerError) as error:
        SweepConfig.from_yaml(path)
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
    result = CLI.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and not (tmp_path / "never").exists()


def test_grid_over_a_plugin_option_and_deduplication(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("grid:\n  quant: [none, static-int8]\n  static-int8.granularity: [linear, block]\n")
    plans = SweepConfig.from_yaml(path).plan()
    assert [p.label for p in plans] == ["trained hop", "trained hop + static-int8(granularity=linear)",
                                        "trained hop + static-int8(granularity=block)"]


def test_grid_over_the_search_engine(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("search: lean\ngrid:\n  search: [espnet, lean]\n  quant: [none, dynamic-int8]\n")
    plans = SweepConfig.from_yaml(path).plan()
    assert [p.label for p in plans] == ["trained hop", "trained hop + dynamic-int8", "trained hop + lean",
                                        "trained hop + lean + dynamic-int8"]
    assert [p.search for p in plans] == ["espnet", "espnet", "lean", "lean"]
    assert [p.plugins.names for p in plans] == [(), ("dynamic-int8",), (), ("dynamic-int8",)]  # resolved once
    path.write_text("grid:\n  engine: [lean, onnxruntime]\n")  # --engine's name for the grid key
    assert [p.search for p in SweepConfig.from_yaml(path).plan()] == ["lean", "onnxruntime"]
    path.write_text("grid:\n  engine: [lean]\n  search: [espnet]\n")
    with pytest.raises(RunnerError, match="grid has both engine and search"):
        SweepConfig.from_yaml(path)
    path.write_text("plugins: [lean]\n")
    with pytest.raises(RunnerError, match=r"'lean' is a search engine, not a plugin: choose it with --search lean"):
        SweepConfig.from_yaml(path)


def test_rows_record_their_code_and_a_resume_by_other_code_is_refused(sweep_yaml: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.sweep.rows import code_versions

    out = tmp_path / "versions"
    assert CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(out), "--no-progress"]).exit_code == 0
    rows = read_rows(out / "results.jsonl")
    assert all(r["versions"] == code_versions() and r["plan_hash"] and r["point"] for r in rows)
    env = json.loads((out / "env.json").read_text())
    assert env["code_versions"] == code_versions()
    # The same rows, as an older commit of the runner would have written them.
    older = [{**r, "versions": {**r["versions"], "runner_commit": "0123456789ab"}} for r in rows]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in older))
    result = CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(out), "--resume", "--no-progress"])
    assert result.exit_code == 2
    assert (f"{out / 'results.jsonl'}: 4 finished row(s) were measured by other code (runner_commit 0123456789ab -> "
            f"{code_versions()['runner_commit']}); resume into another --out, or pass --allow-mixed-versions"
            in result.stderr)
    calls = {"n": 0}
    original = Runner.evaluate_preloaded

    def count(self, preloaded, options):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return original(self, preloaded, options)

    monkeypatch.setattr(Runner, "evaluate_preloaded", count)
    result = CLI.invoke(app, ["sweep", str(sweep_yaml), "--out", str(out), "--resume", "--allow-mixed-versions",
                              "--no-progress"])
    assert result.exit_code == 0, result.output
    assert calls["n"] == 0  # every older row reused, as asked
    assert json.loads((out / "env.json").read_text())["code_versions"] == code_versions()  # not rewritten


def test_delta_bleu_baselines_match_every_grid_key_but_the_number_format() -> None:
    from runner.sweep.report import add_comparisons

    def row(quant: str, beams: int, hop: int, bleu: float, **point: object) -> dict:
        return {"status": "ok", "quant": quant, "hop": hop, "bleu": bleu, "hypotheses": [f"{quant}{beams}{hop}"],
                "point": {"hop": hop, "quant": quant, "wider-beam.beams": beams, **point}}

    rows = [row("none", 2, 160, 50.0), row("none", 4, 160, 60.0), row("dynamic-int8", 2, 160, 49.0),
            row("dynamic-int8", 4, 160, 58.0, **{"dynamic-int8.per_channel": True}), row("none", 4, 200, 40.0),
            row("static-int8", 4, 200, 41.0)]
    add_comparisons(rows, ["ref"])
    assert [r["bleu_delta"] for r in rows] == [None, None, -1.0, -2.0, None, 1.0]
