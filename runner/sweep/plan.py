"""What a sweep runs: its YAML (`SweepConfig`) and the runs of its grid (`RunPlan`)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.config import RunConfig, compose_plugins
from runner.engines import DEFAULT as DEFAULT_ENGINE
from runner.engines import engine_class
from runner.errors import RunnerError
from runner.plugin import PluginSpec
from runner.plugin_set import PluginSet, number_format_plugins
from runner.yamlio import read_yaml_mapping

SWEEP_KEYS = ("repeats", "grid", "measure", "shards")
MEASURES = ("latency", "quality")


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
        if "engine" in grid:  # --engine's name for the search engine, as on translate and serve
            if "search" in grid:
                raise RunnerError(f"{path}: grid has both engine and search (one key names the search engine)")
            grid["search"] = grid.pop("engine")
        config = cls(run, grid, repeats, str(path), measure, shards)
        for key in grid:
            if key not in ("hop", "quant", "search") and "." not in key:
                raise RunnerError(f"{path}: grid key '{key}' is not hop, quant, search (engine) or <plugin>.<option>")
        for engine in grid.get("search", []):
            engine_class(engine, f"{path}: grid search")
        config.check_plans()
        return config

    def check_plans(self) -> None:
        """Every grid point must resolve on the run's device: a typo fails before anything runs, naming the file."""
        self.plan()

    def plan(self) -> list[RunPlan]:
        """The runs of the grid, each with its plugins resolved on the run's device (a `PluginSet`).

        Raises:
            RunnerError: a grid point whose plugins do not resolve, naming the sweep file.
        """
        keys = list(self.grid)
        plans: dict[str, RunPlan] = {}
        for values in itertools.product(*(self.grid[k] for k in keys)):
            point = dict(zip(keys, values))
            specs = compose_plugins(self.run.plugins.specs(), quant=point.get("quant"), hop=point.get("hop"),
                                    options={k: v for k, v in point.items() if "." in k})
            try:
                plugins = PluginSet.resolve(specs, device_type=self.run.device_type)
            except RunnerError as error:
                raise RunnerError(f"{self.source}: {error}") from error
            plan = RunPlan(specs, point, point.get("search", self.run.search), plugins)
            plans.setdefault(plan.identity(), plan)  # options of absent plugins would duplicate runs
        return list(plans.values())


@dataclass
class RunPlan:
    """One run of a sweep: its plugin list, its search engine and the grid point it came from."""

    specs: list[PluginSpec]
    point: dict[str, Any]
    search: str = DEFAULT_ENGINE
    plugins: PluginSet = PluginSet()  # `specs` resolved (SweepConfig.plan)
    plan_hash: str = ""  # the configuration (model, data, decoding, plugins)
    config_hash: str = ""  # the configuration and the code measuring it (rows are keyed by this)

    def identity(self) -> str:
        plugins = [[s.name, s.values] for s in sorted(self.specs, key=lambda s: s.name)]
        return json.dumps(plugins if self.search == DEFAULT_ENGINE else [plugins, self.search], sort_keys=True)

    @property
    def quant(self) -> str:
        formats = number_format_plugins()
        return next((s.name for s in self.specs if s.name in formats), "none")

    @property
    def hop(self) -> int | None:
        return next((p.config.hop_length for p in self.plugins if p.name == "hop"), None)

    @property
    def label(self) -> str:
        parts = [f"hop {self.hop}" if self.hop is not None else "trained hop"]
        if "search" in self.point and self.search != DEFAULT_ENGINE:  # a sweep-wide engine is in the header
            parts.append(self.search)
        for spec in self.specs:
            if spec.name != "hop":
                varied = {k.split(".", 1)[1]: v for k, v in self.point.items() if k.startswith(spec.name + ".")}
                options = ",".join(f"{k}={v}" for k, v in sorted(varied.items()))
                parts.append(spec.name + (f"({options})" if options else ""))
        return " + ".join(parts)
