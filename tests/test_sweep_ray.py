"""`runner sweep --executor ray` on a local 2-CPU Ray cluster, against the local executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from runner.metrics.bleu import corpus_bleu
from runner.sweep import Sweep, SweepConfig, read_rows
from runner.sweep.report import summary_markdown

pytestmark = pytest.mark.slow  # the fast tier (-m 'not slow') leaves this module out

ray = pytest.importorskip("ray")

COMMON = "threads: 1\nwarmup: 1\ndecode: {beam_size: 2, asr_beam_size: 2}\n"  # the shipped demo model and corpus


@pytest.fixture(scope="module")
def cluster() -> str:
    """Two one-CPU task slots on this machine, over loopback; the sweeps below find it already running."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def by_label(rows: list[dict]) -> dict[str, dict]:
    return {row["label"]: row for row in rows}


def test_ray_sweep_matches_the_local_sweep_and_resumes(cluster: str, tmp_path: Path) -> None:
    config = SweepConfig.from_yaml(write(tmp_path / "grid.yaml", COMMON + "limit: 4\n"
                                         "grid:\n  hop: [160, 200]\n  quant: [none, dynamic-int8]\n"))
    local = by_label(Sweep(config, tmp_path / "local", progress=False).run())
    distributed = by_label(Sweep(config, tmp_path / "ray", progress=False, executor="ray").run())
    assert len(local) == len(distributed) == 4
    for label, row in distributed.items():
        assert row["status"] == "ok" and row["executor"] == "ray" and row["attempts"] == 1
        assert row["hypotheses"] == local[label]["hypotheses"]
        assert row["bleu"] == local[label]["bleu"] and row["size_mb"] == local[label]["size_mb"]
        assert row["threads"] == 1 and row["cpu"] and row["timed"] == 3 and row["latency_mean"] > 0
        assert row["config_hash"] == local[label]["config_hash"]
    assert {local[label]["executor"] for label in local} == {"local"}
    assert json.loads((tmp_path / "ray" / "env.json").read_text())["executor"] == "ray"
    assert (tmp_path / "ray" / "summary.md").read_text().count("| hop ") == 4

    # --resume skips what is done, as with the local executor.
    lines = (tmp_path / "ray" / "results.jsonl").read_text().splitlines()
    Sweep(config, tmp_path / "ray", resume=True, progress=False, executor="ray").run()
    assert (tmp_path / "ray" / "results.jsonl").read_text().splitlines() == lines


def test_sharded_quality_pass_gives_the_corpus_bleu_of_the_unsharded_one(cluster: str, tmp_path: Path) -> None:
    text = COMMON + "limit: 10\nmeasure: quality\nshards: 3\ngrid:\n  quant: [none, dynamic-int8]\n"
    config = SweepConfig.from_yaml(write(tmp_path / "quality.yaml", text))
    whole = by_label(Sweep(config, tmp_path / "local", progress=False).run())
    sharded = by_label(Sweep(config, tmp_path / "ray", progress=False, executor="ray").run())
    document = json.loads((tmp_path / "ray" / "results.json").read_text())
    references = document["references"]
    for label, row in sharded.items():
        assert [(s["first_index"], s["n"]) for s in row["shards"]] == [(0, 3), (3, 4), (7, 3)]
        assert row["n"] == 10 and row["hypotheses"] == whole[label]["hypotheses"]
        assert row["bleu"] == whole[label]["bleu"] == corpus_bleu(row["hypotheses"], references).score
        assert row["source_wer"] == whole[label]["source_wer"]
        assert row["latency_mean"] is None and whole[label]["latency_mean"] is None
        shard_scores = [corpus_bleu(row["hypotheses"][a:a + n], references[a:a + n]).score
                        for a, n in ((s["first_index"], s["n"]) for s in row["shards"])]
        assert row["bleu"] != pytest.approx(sum(shard_scores) / len(shard_scores))  # not a mean of shards
    assert "no latency was measured" in (tmp_path / "ray" / "summary.md").read_text()


def test_a_killed_worker_is_retried_and_the_sweep_completes(cluster: str, tmp_path: Path) -> None:
    config = write(tmp_path / "grid.yaml", COMMON + "limit: 12\ngrid:\n  quant: [none, dynamic-int8]\n")
    out = tmp_path / "out"
    sweep = subprocess.Popen([sys.executable, "-m", "runner.cli", "sweep", str(config), "--out", str(out),
                              "--executor", "ray", "--address", cluster, "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and sweep.poll() is None and time.monotonic() < deadline:
        victim = next(iter(task_processes("ray::execute")), None)
        time.sleep(0.1)
    assert victim is not None, "no Ray task process seen"
    time.sleep(1.0)  # mid-run: loading, calibrating or decoding
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, stderr
    rows = read_rows(out / "results.jsonl")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert sorted(r["attempts"] for r in rows) == [1, 2]
    assert all(r["n"] == 12 and r["timed"] == 11 for r in rows)
    assert "| trained hop + dynamic-int8 |" in stdout


def task_processes(title: str) -> list[int]:
    """Pids whose command line (Ray sets it to ray::<function> while a task runs) starts with `title`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title.encode()):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_failing_run_is_recorded_with_its_reason_and_the_others_finish(cluster: str, tmp_path: Path) -> None:
    text = (COMMON + "limit: 3\nplugins:\n  - {name: static-int8, calibration_data: /nonexistent/mustc}\n"
            "grid:\n  quant: [none, static-int8]\n")
    rows = by_label(Sweep(SweepConfig.from_yaml(write(tmp_path / "grid.yaml", text)), tmp_path / "out",
                          progress=False, executor="ray").run())
    assert rows["trained hop"]["status"] == "ok"
    failed = rows["trained hop + static-int8"]
    assert failed["status"] == "failed" and "/nonexistent/mustc: data path not found" in failed["reason"]
    assert failed["attempts"] == 1 and failed["error_type"] == "RunnerError"  # an error in the run: not retried
    assert "failed: /nonexistent/mustc" in (tmp_path / "out" / "summary.md").read_text()


def test_summary_keeps_machine_types_apart(cluster: str, tmp_path: Path) -> None:
    config = SweepConfig.from_yaml(write(tmp_path / "grid.yaml", COMMON + "limit: 2\ngrid:\n  quant: [none, dynamic-int8]\n"))
    rows = Sweep(config, tmp_path / "out", progress=False, executor="ray").run()
    env = json.loads((tmp_path / "out" / "env.json").read_text())
    assert "machine types" not in summary_markdown(rows, env, config)
    rows[1]["cpu"] = "Another CPU"  # as if a second kind of node had timed this run
    summary = summary_markdown(rows, env, config)
    assert "Latency was measured on 2 machine types" in summary
    assert f"### Measured on {rows[0]['cpu']} (1 run(s))" in summary and "### Measured on Another CPU (1 run(s))" in summary


def test_an_unreachable_address_is_a_one_line_error(tmp_path: Path) -> None:
    config = write(tmp_path / "grid.yaml", COMMON + "limit: 2\ngrid:\n  quant: [none]\n")
    done = run_cli("sweep", str(config), "--out", str(tmp_path / "out"), "--executor", "ray",
                   "--address", "127.0.0.1:1", "--no-progress", timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --address 127.0.0.1:1: no Ray cluster reachable at 127.0.0.1:1 ([Errno 111] Connection refused)")
