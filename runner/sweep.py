"""`runner sweep`: a grid of plugin configurations, measured one after another, resumable.

The float model and the test subset load once; every run starts from a fresh copy of the
float model, applies its plugins, warms up and times every preloaded utterance. Each finished
row is appended to results.jsonl at once, so an interrupted sweep keeps what it finished and
`--resume` skips rows whose config hash is already there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import defaults
from runner.config import RunConfig, compose_plugins, decode_options
from runner.data import PreloadedSet
from runner.errors import RunnerError, error_fields, first_line
from runner.plugin import PluginSpec, number_format_plugins
from runner.plugin import resolve as resolve_plugins
from runner.report import Report
from runner.yamlio import read_yaml_mapping

SWEEP_KEYS = ("repeats", "grid", "measure", "shards")
EXECUTORS = ("local", "ray")
MEASURES = ("latency", "quality")
LATENCY_KEYS = ("latency_mean", "latency_std", "latency_p50", "latency_p90", "latency_p99", "rtf", "repeat_means",
                "cv", "stages_mean", "timed")


@dataclass
class SweepConfig:
    run: RunConfig
    grid: dict[str, list[Any]]
    repeats: int = 1
    source: str = ""
    measure: str = "latency"  # "quality": BLEU only, no latency (on Ray: utterance shards over workers)
    shards: int | None = None  # quality passes on Ray; default: one per task slot of the cluster

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepConfig:
        path = Path(path)
        values = read_yaml_mapping(path, "sweep config")
        run = RunConfig.from_dict({k: v for k, v in values.items() if k not in SWEEP_KEYS}, str(path))
        grid = values.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise RunnerError(f"{path}: grid must map keys to non-empty lists, e.g. {{hop: [160, 200]}}")
        repeats = values.get("repeats", 1)
        if not isinstance(repeats, int) or repeats < 1:
            raise RunnerError(f"{path}: repeats must be a positive integer, got {repeats!r}")
        measure = values.get("measure", "latency")
        if measure not in MEASURES:
            raise RunnerError(f"{path}: measure must be one of {list(MEASURES)}, got {measure!r}")
        shards = values.get("shards")
        if shards is not None and (not isinstance(shards, int) or isinstance(shards, bool) or shards < 1):
            raise RunnerError(f"{path}: shards must be a positive integer, got {shards!r}")
        config = cls(run, grid, repeats, str(path), measure, shards)
        for key in grid:
            if key not in ("hop", "quant") and "." not in key:
                raise RunnerError(f"{path}: grid key '{key}' is not hop, quant or <plugin>.<option>")
        for point in config.plan():  # every grid point must build: a typo fails before anything runs
            try:
                resolve_plugins(point.specs)
            except RunnerError as error:
                raise RunnerError(f"{path}: {error}") from error
        return config

    def plan(self) -> list[RunPlan]:
        keys = list(self.grid)
        plans: dict[str, RunPlan] = {}
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            specs = compose_plugins(self.run.plugins, quant=point.get("quant"), hop=point.get("hop"),
                                    options={k: v for k, v in point.items() if "." in k})
            plan = RunPlan(specs, point)
            plans.setdefault(plan.identity(), plan)  # options of absent plugins would duplicate runs
        return list(plans.values())


@dataclass
class RunPlan:
    specs: list[PluginSpec]
    point: dict[str, Any]
    config_hash: str = ""

    def identity(self) -> str:
        return json.dumps([[s.name, s.values] for s in sorted(self.specs, key=lambda s: s.name)], sort_keys=True)

    @property
    def quant(self) -> str:
        formats = number_format_plugins()
        return next((s.name for s in self.specs if s.name in formats), "none")

    @property
    def hop(self) -> int | None:
        return next((s.values.get("hop_length", 160) for s in self.specs if s.name == "hop"), None)

    @property
    def label(self) -> str:
        parts = [f"hop {self.hop}" if self.hop is not None else "trained hop"]
        for spec in self.specs:
            if spec.name != "hop":
                varied = {k.split(".", 1)[1]: v for k, v in self.point.items() if k.startswith(spec.name + ".")}
                options = ",".join(f"{k}={v}" for k, v in sorted(varied.items()))
                parts.append(spec.name + (f"({options})" if options else ""))
        return " + ".join(parts)


def _hash(payload: dict[str, Any]) -> str:
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
    means = [r.latency_mean for r in reports]
    median = statistics.median(means)
    middle = min(reports, key=lambda r: abs(r.latency_mean - median))
    m, c = middle.metrics, middle.conditions
    calibration = sum(p.get("calibration_seconds", 0.0) for p in c["plugins"])
    return {
        "config_hash": plan.config_hash, "status": "ok", "label": plan.label, "hop": c["hop_length"],
        "quant": plan.quant, "dtype": c["dtype"], "plugins": c["plugins"], "size_mb": m["size_mb"],
        "parameters": m["parameters"], "bleu": m["bleu"]["score"], "bleu_signature": m["bleu"]["signature"],
        "chrf": m["chrf"]["score"], "source_wer": m["source_wer"], "latency_mean": median,
        "latency_std": m["latency"]["std"], "latency_p50": m["latency"]["p50"], "latency_p90": m["latency"]["p90"],
        "latency_p99": m["latency"]["p99"], "rtf": m["latency"]["rtf"], "repeats": len(reports),
        "repeat_means": means, "cv": (statistics.stdev(means) / statistics.mean(means)) if len(means) > 1 else None,
        "stages_mean": m["stages_mean"], "calibration_seconds": calibration or None, "n": middle.data["n"],
        "timed": m["latency"]["count"], "threads": c["threads"], "warmup": c["warmup"], "engine": c["quantized_engine"],
        "cpu": c["cpu"], "hypotheses": middle.hypotheses(),
    }


@dataclass
class Sweep:
    config: SweepConfig
    out: Path
    resume: bool = False
    progress: bool = True
    executor: str = "local"  # or "ray": runs (or utterance shards) as Ray tasks
    address: str | None = None  # Ray cluster address; None starts a local one
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def jsonl(self) -> Path:
        return self.out / "results.jsonl"

    def run(self) -> list[dict[str, Any]]:
        from runner.runner import Runner

        if self.executor not in EXECUTORS:
            raise RunnerError(f"--executor must be one of {list(EXECUTORS)}, got '{self.executor}'")
        run = self.config.run
        self.out.mkdir(parents=True, exist_ok=True)
        if self.jsonl.exists() and self.jsonl.stat().st_size and not self.resume:
            raise RunnerError(f"{self.jsonl}: holds results already; pass --resume to continue or choose another --out")
        decode = decode_options(run.decode)
        model_path = run.model or defaults.model_path()
        # A Ray task reserves `threads` CPUs, so it needs a number: one thread unless the YAML says.
        threads = run.threads or (1 if self.executor == "ray" else None)
        base = Runner(model_path, decode, threads=threads)
        options = run.evaluate_options(progress=self.progress and self.executor == "local")
        preloaded = base.preload(options)
        identity = {"model": base.bundle.files.content_hash, "data": preloaded.content_hash,
                    "decode": decode.speech2text_kwargs(), "threads": base.threads, "warmup": run.warmup,
                    "repeats": self.config.repeats, "measure": self.config.measure}
        plans = self.config.plan()
        for plan in plans:
            plan.config_hash = _hash({**identity, "plugins": plan.identity()})
        finished = {r["config_hash"] for r in read_rows(self.jsonl) if r.get("status") == "ok"}
        todo = [p for p in plans if p.config_hash not in finished]
        self._write_env(base, preloaded)
        try:
            if self.executor == "ray":
                from runner.sweep_ray import run_on_ray

                run_on_ray(self, todo, base, preloaded)
            else:
                self._run_local(todo, base, preloaded, options)
        finally:
            self.rows = latest_rows(read_rows(self.jsonl), [p.config_hash for p in plans])
            if self.rows:
                from runner.sweep_report import write_outputs

                write_outputs(self.out, self.rows, preloaded, self.config, base)
        return self.rows

    def finish(self, row: dict[str, Any]) -> None:
        """Record one run's row for good (a quality pass keeps no latency figures)."""
        if self.config.measure == "quality" and row.get("status") == "ok":
            row.update({key: None for key in LATENCY_KEYS})
        append_row(self.jsonl, row)

    def _run_local(self, todo: list[RunPlan], base: Any, preloaded: PreloadedSet, options: Any) -> None:
        from runner.runner import Runner

        bar = overall_bar(len(todo) * self.config.repeats, self.progress)
        reports: dict[str, list[Report]] = {p.config_hash: [] for p in todo}
        runners: dict[str, Any] = {}
        try:
            for repeat in range(self.config.repeats):  # interleaved: A B C ... A B C ...
                for plan in todo:
                    if plan.config_hash not in reports:
                        continue  # failed earlier
                    bar.set_description(f"{plan.label} [{repeat + 1}/{self.config.repeats}]")
                    try:
                        runner = runners.get(plan.config_hash) or Runner.from_bundle(
                            base.bundle, base.threads, plan.specs, calibration_data=self.config.run.data)
                        if self.config.repeats > 1:
                            runners[plan.config_hash] = runner
                        reports[plan.config_hash].append(runner.evaluate_preloaded(preloaded, options))
                    except Exception as error:  # this run failed: record why, the other runs go on
                        self.finish(failed_row(plan, first_line(error), **error_fields(error)))
                        del reports[plan.config_hash]
                        runners.pop(plan.config_hash, None)
                    bar.update(1)
                    if repeat == self.config.repeats - 1 and plan.config_hash in reports:
                        self.finish({**row_from_reports(plan, reports[plan.config_hash]), **worker("local")})
                        runners.pop(plan.config_hash, None)
        finally:
            bar.close()

    def _write_env(self, base: Any, preloaded: PreloadedSet) -> None:
        from runner.environment import manifest

        env = {**manifest(), "model": str(base.bundle.files.origin),
               "model_content_hash": base.bundle.files.content_hash,
               "data": str(preloaded.test_set.path), "split": preloaded.test_set.split,
               "data_content_hash": preloaded.content_hash, "n": len(preloaded.utterances),
               "sweep_config": self.config.source, "command": " ".join(sys.argv),
               "executor": self.executor, "measure": self.config.measure}
        (self.out / "env.json").write_text(json.dumps(env, indent=2), encoding="utf-8")


def failed_row(plan: RunPlan, reason: str, **extra: Any) -> dict[str, Any]:
    """A run that did not finish: `reason` is its one-line error, `error_type` (in `extra`) the exception's class."""
    return {"config_hash": plan.config_hash, "status": "failed", "label": plan.label, "reason": reason, **extra}


def worker(executor: str) -> dict[str, Any]:
    """Where a row was measured (its CPU model and threads are in the row already)."""
    return {"executor": executor, "host": socket.gethostname(), "pid": os.getpid()}


def latest_rows(rows: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """The last row per config hash (a resumed run replaces its failed attempt), in plan order."""
    last = {r["config_hash"]: r for r in rows}
    return [last[h] for h in order if h in last]


def overall_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="sweep", unit="run", file=sys.stderr, disable=not enabled, dynamic_ncols=True)
