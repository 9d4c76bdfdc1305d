"""Sweeps: a grid of plugin configurations measured into one table.

    from runner.sweep import Sweep, SweepConfig
    rows = Sweep(SweepConfig.from_yaml("configs/hop.yaml"), Path("results/hop")).run()

`plan` reads the YAML and expands its grid, `rows` writes and reads results.jsonl, `executors`
runs the plans (local, Ray, or one registered under `runner.executors`), `report` writes the
summary, CSV/JSON and plots, and `core` ties them together.
"""

from runner.sweep.core import Sweep
from runner.sweep.executors import Executor, create_executor, executor_names
from runner.sweep.plan import RunPlan, SweepConfig
from runner.sweep.rows import append_row, read_rows

__all__ = ["Executor", "RunPlan", "Sweep", "SweepConfig", "append_row", "create_executor", "executor_names",
           "read_rows"]
