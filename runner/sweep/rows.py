"""A sweep's rows: one JSON line per finished (or failed) run, appended and fsynced at once.

Each row records the code it was measured with (`code_versions`: st-runner's version and commit,
torch, torchaudio, ESPnet, sacrebleu, numpy); its `config_hash` covers them, and its `plan_hash`
the configuration alone, so a resume can tell rows of the same run measured by other code.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
from pathlib import Path
from typing import Any

from runner.report import Report
from runner.sweep.plan import RunPlan

LATENCY_KEYS = ("latency_mean", "latency_std", "latency_p50", "latency_p90", "latency_p99", "rtf", "repeat_means",
                "cv", "stages_mean", "seconds_per_step", "timed", "utterances_per_second",
                "audio_seconds_per_second")


def code_versions() -> dict[str, Any]:
    """What a row's figures depend on besides its configuration: this code and its libraries."""
    import runner
    from runner.environment import git_commit, library_versions

    return {"runner": runner.__version__, "runner_commit": git_commit(), **library_versions()}


def stable_hash(payload: dict[str, Any]) -> str:
    """A short sha256 of a JSON-able payload, independent of key order."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One whole line per write on an O_APPEND descriptor, fsynced: a crash never corrupts finished rows."""
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_cut_line(path: Path) -> bool:
    """Cut a last line that a crash left without its newline, so the next row starts on a line of its own.

    Returns:
        Whether a cut line was removed (its run has no row, so it is measured again).
    """
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        data = f.seek(0) or f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())
    return True


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash mid-write: that run is simply redone
            continue
    return rows


def row_from_reports(plan: RunPlan, reports: list[Report]) -> dict[str, Any]:
    """One run's row: its grid point, the figures of its median repeat and the conditions they were measured
    under (`RunConditions.model_dict()`: threads, int8 backend, device, hop, search, plugins, dtype, runtime)."""
    means = [r.latency_mean for r in reports]
    median = statistics.median(means)
    middle = min(reports, key=lambda r: abs(r.latency_mean - median))
    m, c = middle.metrics, middle.conditions
    calibration = sum(record.seconds for _, record in c.calibrations)
    conditions = c.model_dict()
    return {
        "config_hash": plan.config_hash, "plan_hash": plan.plan_hash, "point": plan.point, "status": "ok",
        "label": plan.label, "hop": c.hop_length, "quant": plan.quant, **conditions,
        "runtime": conditions["runtime"] or None, "size_mb": m.size_mb, "parameters": m.parameters, "bleu": m.bleu.score,
        "bleu_signature": m.bleu.signature, "chrf": m.chrf.score, "source_wer": m.source_wer,
        "latency_mean": median, "latency_std": m.latency.std, "latency_p50": m.latency.p50,
        "latency_p90": m.latency.p90, "latency_p99": m.latency.p99, "rtf": m.latency.rtf, "repeats": len(reports),
        "repeat_means": means, "cv": (statistics.stdev(means) / statistics.mean(means)) if len(means) > 1 else None,
        "stages_mean": m.stages_mean, "steps_mean": m.steps_mean, "seconds_per_step": m.seconds_per_step,
        "calibration_seconds": calibration or None, "n": middle.data["n"],
        "timed": m.latency.count, "warmup": c.warmup, "batch_size": c.batch_size, "gpu": c.machine.get("gpu"), "gpu_peak_memory_bytes": m.gpu_peak_memory_bytes,
        "utterances_per_second": m.throughput.utterances_per_second if m.throughput else None,
        "audio_seconds_per_second": m.throughput.audio_seconds_per_second if m.throughput else None,
        "cpu": c.machine.get("cpu"), "cpu_kind": c.machine.get("cpu_kind"), "hypotheses": middle.hypotheses(),
    }


def failed_row(plan: RunPlan, reason: str, **extra: Any) -> dict[str, Any]:
    """A run that did not finish: `reason` is its one-line error, `error_type` (in `extra`) the exception's class."""
    return {"config_hash": plan.config_hash, "plan_hash": plan.plan_hash, "point": plan.point, "status": "failed",
            "label": plan.label, "reason": reason, **extra}


def worker(executor: str) -> dict[str, Any]:
    """Where a row was measured (its CPU model and threads are in the row already)."""
    return {"executor": executor, "host": socket.gethostname(), "pid": os.getpid()}


def latest_rows(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """The last row per config hash (a resumed run replaces its failed attempt), in plan order."""
    last = {r["config_hash"]: r for r in rows}
    return [last[h] for h in order if h in last]

