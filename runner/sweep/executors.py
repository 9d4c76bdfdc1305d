"""Where a sweep's runs execute: one `Executor` interface, chosen by name.

`local` runs every run here, one after another (repeats interleaved); `ray` sends runs, or
utterance shards, to a Ray cluster (`runner.sweep.ray_executor`). Another engine registers a
class under the entry-point group `runner.executors` and is chosen with `--executor NAME`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from runner.errors import RunnerError, error_fields, first_line
from runner.progress import counter
from runner.registry import Registry
from runner.sweep.plan import RunPlan, SweepConfig
from runner.sweep.rows import failed_row, row_from_reports, worker

if TYPE_CHECKING:
    from runner.data import PreloadedSet
    from runner.report import Report
    from runner.options import EvaluateOptions
    from runner.runner import Runner

ENTRY_POINT_GROUP = "runner.executors"  # the built-in local and ray executors register here too (pyproject.toml)


class SweepRecorder(Protocol):
    """What an executor sees of the sweep it serves."""

    config: SweepConfig
    progress: bool

    def finish(self, row: dict[str, Any]) -> None:
        """Record one run's row for good (appended and fsynced at once)."""


class Executor(ABC):
    """Runs a sweep's pending runs and records one row per run through `sweep.finish`."""

    name: ClassVar[str]

    def __init__(self, address: str | None = None) -> None:
        """`address`: where the engine's cluster is (None: this machine; local accepts nothing else)."""
        self.address = address

    def threads(self, requested: int | None) -> int | None:
        """The intra-op threads each run uses (None: every core of the machine it runs on)."""
        return requested

    def base_device(self, requested: str) -> str:
        """Where the driver loads the float model that runs copy (the runs' own device by default)."""
        return requested

    @abstractmethod
    def run(self, sweep: SweepRecorder, todo: list[RunPlan], base: Runner, preloaded: PreloadedSet,
            options: EvaluateOptions) -> None:
        """Measure every plan of `todo` on copies of `base`'s float model and `preloaded`'s utterances."""


class LocalExecutor(Executor):
    """Every run in this process, one after another; repeats interleaved (A B C, A B C, ...)."""

    name = "local"

    def __init__(self, address: str | None = None) -> None:
        if address is not None:
            raise RunnerError("--address needs an executor that runs on a cluster, e.g. --executor ray")
        super().__init__(address)

    def run(self, sweep: SweepRecorder, todo: list[RunPlan], base: Runner, preloaded: PreloadedSet,
            options: EvaluateOptions) -> None:
        from runner.runner import Runner

        repeats = sweep.config.repeats
        bar = counter(len(todo) * repeats, "sweep", "run", sweep.progress)
        reports: dict[str, list[Report]] = {p.config_hash: [] for p in todo}
        runners: dict[str, Runner] = {}
        try:
            for repeat in range(repeats):
                for plan in todo:
                    if plan.config_hash not in reports:
                        continue  # failed earlier
                    bar.set_description(f"{plan.label} [{repeat + 1}/{repeats}]")
                    try:
                        runner = runners.get(plan.config_hash) or Runner.from_bundle(
                            base.bundle, base.threads, plan.plugins, calibration_data=sweep.config.run.data,
                            search=plan.search)
                        if repeats > 1:
                            runners[plan.config_hash] = runner
                        reports[plan.config_hash].append(runner.evaluate_preloaded(preloaded, options))
                    except Exception as error:  # this run failed: record why, the other runs go on
                        sweep.finish(failed_row(plan, first_line(error), **error_fields(error)))
                        del reports[plan.config_hash]
                        runners.pop(plan.config_hash, None)
                    bar.update(1)
                    if repeat == repeats - 1 and plan.config_hash in reports:
                        sweep.finish({**row_from_reports(plan, reports[plan.config_hash]), **worker(self.name)})
                        runners.pop(plan.config_hash, None)
        finally:
            bar.close()


def _check_class(name: str, where: str, executor: Any) -> None:
    if not (isinstance(executor, type) and issubclass(executor, Executor)):
        raise RunnerError(f"executor '{name}' ({where}) is not a runner.sweep.executors.Executor subclass")


REGISTRY: Registry[type[Executor]] = Registry(ENTRY_POINT_GROUP, "executor", _check_class, eager=False)


def executor_names() -> list[str]:
    """The executors registered under `runner.executors` (the built-in local and ray ones among them)."""
    return REGISTRY.names()


def create_executor(name: str, address: str | None = None) -> Executor:
    """The executor called `name`, or a one-line error listing the registered ones."""
    return REGISTRY.get(name, "--executor")(address)
