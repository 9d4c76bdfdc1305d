"""`runner sweep`: a grid of plugin configurations, measured by an executor, resumable.

The float model and the test subset load once; every run starts from a fresh copy of the
float model, applies its plugins, warms up and times every preloaded utterance. Each finished
row is appended to results.jsonl at once, so an interrupted sweep keeps what it finished and
`--resume` skips rows measured by the same configuration and the same code. Rows measured by
other code (another runner commit or library version) are refused unless `allow_mixed_versions`.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import defaults
from runner.data import PreloadedSet
from runner.errors import RunnerError
from runner.outputs import output_lock
from runner.sweep.executors import create_executor
from runner.sweep.plan import RunPlan, SweepConfig
from runner.sweep.rows import (LATENCY_KEYS, append_row, code_versions, latest_rows, read_rows, repair_cut_line,
                               stable_hash)

logger = logging.getLogger("runner")


@dataclass
class Sweep:
    """One sweep: its config, its output directory and how to run it.

    Attributes:
        config: the sweep YAML, parsed.
        out: the output directory (results.jsonl, summary.md, CSV/JSON, plots, env.json).
        resume: skip runs already in results.jsonl (same configuration, same code).
        progress: show progress bars.
        executor: "local", "ray" or an executor registered under `runner.executors`.
        address: the executor's cluster (Ray: auto, host:port or ray://...; None starts a local one).
        allow_mixed_versions: on resume, reuse rows measured by other code instead of refusing.
    """

    config: SweepConfig
    out: Path
    resume: bool = False
    progress: bool = True
    executor: str = "local"
    address: str | None = None
    allow_mixed_versions: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)  # the code this sweep measures with

    @property
    def jsonl(self) -> Path:
        return self.out / "results.jsonl"

    def run(self) -> list[dict[str, Any]]:
        """Measure every run not measured yet; write the outputs. Returns the rows in plan order."""
        engine = create_executor(self.executor, self.address)
        self.out.mkdir(parents=True, exist_ok=True)
        with output_lock(self.out):
            return self._run(engine)

    def _run(self, engine: Any) -> list[dict[str, Any]]:
        from runner.runner import Runner

        run = self.config.run
        if self.jsonl.exists() and self.jsonl.stat().st_size and not self.resume:
            raise RunnerError(f"{self.jsonl}: holds results already; pass --resume to continue or choose another --out")
        if repair_cut_line(self.jsonl):
            logger.info("%s: its last line was cut by a crash mid-write; that run is measured again", self.jsonl)
        decode = run.decode
        base = Runner(run.model or defaults.model_path(), decode, threads=engine.threads(run.threads),
                      device=engine.base_device(run.device))
        options = run.evaluate.replace(progress=self.progress and engine.name == "local")
        preloaded = base.preload(options)
        versions = code_versions()
        identity = {"model": base.bundle.files.content_hash, "data": preloaded.content_hash,
                    "decode": decode.speech2text_kwargs(), "threads": base.threads, "warmup": options.warmup,
                    **({"batch_size": options.batch_size} if options.batch_size != 1 else {}),
                    **({"device": run.device} if run.device != "cpu" else {}),
                    "repeats": self.config.repeats, "measure": self.config.measure}
        plans = self.config.plan()
        for plan in plans:
            plan.plan_hash = stable_hash({**identity, "plugins": plan.identity()})
            plan.config_hash = stable_hash({"plan": plan.plan_hash, "versions": versions})
        finished = self._reusable_rows(plans, versions)
        todo = [p for p in plans if p.config_hash not in finished]
        self._write_env(base, preloaded, versions)
        self.versions = versions
        try:
            engine.run(self, todo, base, preloaded, options)
        finally:
            self.rows = latest_rows(read_rows(self.jsonl), [p.config_hash for p in plans])
            if self.rows:
                from runner.sweep.report import write_outputs

                write_outputs(self.out, self.rows, preloaded, self.config)
        return self.rows

    def _reusable_rows(self, plans: list[RunPlan], versions: dict[str, Any]) -> set[str]:
        """Config hashes already measured; rows of other code are refused, or reused when allowed."""
        rows = [r for r in read_rows(self.jsonl) if r.get("status") == "ok"]
        other = [r for r in rows if r.get("versions") != versions]
        if other and not self.allow_mixed_versions:
            was = other[0].get("versions") or {}
            changed = sorted(key for key in {**versions, **was} if was.get(key) != versions.get(key))
            detail = ", ".join(f"{key} {was.get(key)} -> {versions.get(key)}" for key in changed)
            raise RunnerError(f"{self.jsonl}: {len(other)} finished row(s) were measured by other code ({detail}); "
                              f"resume into another --out, or pass --allow-mixed-versions to keep them")
        by_plan = {p.plan_hash: p for p in plans}
        for row in other:  # allowed: a row of other code counts for the plan it measured
            plan = by_plan.get(row.get("plan_hash"))
            if plan is not None:
                plan.config_hash = row["config_hash"]
        return {r["config_hash"] for r in rows}

    def finish(self, row: dict[str, Any]) -> None:
        """Record one run's row for good (a quality pass keeps no latency figures)."""
        if self.config.measure == "quality" and row.get("status") == "ok":
            row.update({key: None for key in LATENCY_KEYS})
        row.setdefault("versions", self.versions)
        append_row(self.jsonl, row)

    def _write_env(self, base: Any, preloaded: PreloadedSet, versions: dict[str, Any]) -> None:
        """env.json describes the sweep's first start; a resume by other code is added, never overwritten."""
        from runner.environment import manifest

        path = self.out / "env.json"
        if path.is_file() and self.resume:
            env = json.loads(path.read_text(encoding="utf-8"))
            if env.get("code_versions") != versions and versions not in env.get("resumed_by", []):
                env.setdefault("resumed_by", []).append(versions)
                path.write_text(json.dumps(env, indent=2), encoding="utf-8")
            return
        env = {**manifest(base.threads, device=base.device), "model": str(base.bundle.files.origin),
               "model_content_hash": base.bundle.files.content_hash,
               "data": str(preloaded.test_set.path), "split": preloaded.test_set.split,
               "data_content_hash": preloaded.content_hash, "n": len(preloaded.utterances),
               "sweep_config": self.config.source, "command": " ".join(sys.argv),
               "executor": self.executor, "measure": self.config.measure, "code_versions": versions}
        path.write_text(json.dumps(env, indent=2), encoding="utf-8")
