"""From sensitivity to a plan: the BLEU of quantizing groups alone, and a tuner with a BLEU budget.

`tune` measures fp32 and all-int8 on the tuning split (dev); if int8 costs more than the budget it
tries SmoothQuant's scales first (the usual cause is activation outliers, which smoothing removes
at no cost in size or speed), then keeps the most sensitive Linears (`runner.quant.sensitivity` ranking)
in float, finding by bisection the fewest that bring dev BLEU within the budget, as Neural
Compressor's accuracy-aware fallback does.
Every trial is appended to `trials.jsonl` as it finishes, so an interrupted tune keeps what it
measured. The result is a run config (`plugins:` with the int8 plugin's `skip` list) that
`runner translate --config`, `runner sweep` and `runner serve` accept. It never reads a test split
unless that is the split it is given: tune on dev, report on test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.data import PreloadedSet
from runner.errors import RunnerError
from runner.model import ModelBundle
from runner.options import EvaluateOptions
from runner.runner import Runner


@dataclass(frozen=True)
class Trial:
    """One measured configuration on the tuning split."""

    float_modules: tuple[str, ...]  # Linears kept in float
    bleu: float
    changed: float  # share of translations that differ from fp32's
    size_mb: float
    latency_mean: float  # seconds per utterance after warm-up
    seconds: float  # wall time of the trial (load, calibration, decode)


@dataclass
class TunePlan:
    """What `tune` found: the plugins to run, and the figures on the tuning split that chose them."""

    scheme: str
    smoothquant: bool  # the plan smooths first
    budget: float
    split: str
    fp32: Trial
    all_int8: Trial  # everything in int8: plain, or smoothed when smoothquant was asked for
    plan: Trial
    plugins: list[dict[str, Any]]
    trials: list[Trial] = field(default_factory=list)
    utterances: int = 0  # tuning utterances each trial decodes
    smoothed_all_int8: Trial | None = None  # smoothquant + everything in int8, tried after plain missed the budget

    @property
    def translations(self) -> int:
        """Utterances decoded over every trial (the search's cost)."""
        return len(self.trials) * self.utterances

    def run_config(self, model: str | None) -> dict[str, Any]:
        """The plan as a run config mapping (`runner.config.RunConfig`)."""
        return {"model": model, "plugins": self.plugins}


def quant_plugins(scheme: str, float_modules: Sequence[str], smoothquant: bool,
                  calibration: dict[str, Any] | None = None,
                  options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The plugin entries of a plan: optional smoothquant, then `scheme` with `float_modules` skipped.

    Args:
        scheme: the int8 plugin's name.
        float_modules: Linears it leaves in float (its `skip`).
        smoothquant: put smoothquant first.
        calibration: calibration_data/_split/_size, for every plugin that calibrates.
        options: more options of the int8 plugin (e.g. observer).
    """
    calibration = calibration or {}
    entry = {"name": scheme, **(calibration if scheme == "static-int8" else {}), **(options or {})}
    if float_modules:
        entry["skip"] = list(float_modules)
    return ([{"name": "smoothquant", **calibration}] if smoothquant else []) + [entry]


def measure(bundle: ModelBundle, preloaded: PreloadedSet, options: EvaluateOptions, plugins: list[dict[str, Any]],
            threads: int, reference: list[str] | None, calibration_data: str | Path | None,
            float_modules: Sequence[str] = (), search: str | None = None) -> tuple[Trial, list[str]]:
    """Decode `preloaded` with `plugins` over a copy of `bundle` (on the `search` engine, default the
    bundle's); the trial and its translations."""
    started = time.perf_counter()
    runner = Runner.from_bundle(bundle, threads=threads, plugins=plugins, calibration_data=calibration_data,
                                **({"search": search} if search else {}))
    report = runner.evaluate_preloaded(preloaded, options)
    texts = [u["hypothesis"] for u in report.utterances]
    changed = (sum(a != b for a, b in zip(texts, reference)) / len(texts)) if reference else 0.0
    return Trial(tuple(float_modules), report.bleu.score, changed, report.metrics.size_mb, report.metrics.latency.mean,
                 time.perf_counter() - started), texts


def bisect_fallback(ranking: Sequence[str], within: Callable[[int], bool]) -> int:
    """The fewest leading modules of `ranking` to keep in float so that `within(k)` holds.

    `within(len(ranking))` is assumed (everything in float); `within(0)` is known to fail.
    """
    low, high = 0, len(ranking)
    while high - low > 1:
        middle = (low + high) // 2
        if within(middle):
            high = middle
        else:
            low = middle
    return high


class TrialLog:
    """`trials.jsonl` in the output directory: one line per trial, flushed as it finishes."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "trials.jsonl"
        self.path.write_text("")

    def add(self, label: str, trial: Trial) -> None:
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({"label": label, **asdict(trial)}) + "\n")
            stream.flush()


def check_budget(budget: float) -> None:
    """Refuse a negative or non-finite BLEU budget in one line."""
    if not budget >= 0 or budget == float("inf"):
        raise RunnerError(f"--max-bleu-drop must be 0 or more BLEU points, got {budget:g}")


@dataclass(frozen=True)
class TuneOptions:
    """How `tune` searches.

    Attributes:
        scheme: "dynamic-int8" or "static-int8".
        budget: the largest dev BLEU drop from fp32 the plan may have (BLEU points).
        smoothquant: put the smoothquant plugin before the int8 plugin (True), never (False), or only when
            plain all-int8 misses the budget and smoothing measures better (None, the default).
        threads: intra-op threads for every trial.
        ranking_utterances: calibration utterances the sensitivity ranking decodes.
        calibration: calibration_data/_split/_size of the plugins that calibrate.
        plugin_options: extra options of the int8 plugin (e.g. observer, parts).
        search: the search engine every trial decodes on (default: the model's, ESPnet's search).
        batch_size: utterances per beam search in the trials (an engine that batches, e.g. lean).
    """

    scheme: str
    budget: float = 1.0
    smoothquant: bool | None = None
    threads: int = 1
    ranking_utterances: int = 8
    calibration: dict[str, Any] = field(default_factory=dict)
    plugin_options: dict[str, Any] = field(default_factory=dict)
    search: str | None = None
    batch_size: int = 1

    def plugins(self, float_modules: Sequence[str], smoothquant: bool) -> list[dict[str, Any]]:
        """The plan's plugin entries with `float_modules` left in float."""
        return quant_plugins(self.scheme, float_modules, smoothquant, self.calibration, self.plugin_options)


class _Trials:
    """The trials of one tune: measured on the tuning split, logged as they finish, reported as they go."""

    def __init__(self, bundle: ModelBundle, preloaded: PreloadedSet, options: TuneOptions, out: Path,
                 calibration_data: str | Path, progress: Callable[[str], None]) -> None:
        self.bundle, self.preloaded, self.options = bundle, preloaded, options
        self.calibration_data, self.progress = calibration_data, progress
        self.evaluate = EvaluateOptions(data=str(preloaded.test_set.path), split=preloaded.test_set.split, warmup=1,
                                        batch_size=options.batch_size)
        self.log = TrialLog(out)
        self.done: list[Trial] = []
        self.reference: list[str] | None = None  # fp32's translations

    def run(self, label: str, plugins: list[dict[str, Any]], float_modules: Sequence[str] = ()) -> Trial:
        trial, texts = measure(self.bundle, self.preloaded, self.evaluate, plugins, self.options.threads,
                               self.reference, self.calibration_data, float_modules, self.options.search)
        if self.reference is None:
            self.reference = texts
        self.done.append(trial)
        self.log.add(label, trial)
        self.progress(f"{label}: dev BLEU {trial.bleu:.2f}, {len(float_modules)} Linear(s) in float, "
                      f"{trial.changed:.0%} of translations differ from fp32")
        return trial


def _ranking(bundle: ModelBundle, calibration: PreloadedSet, options: TuneOptions, smoothquant: bool,
             calibration_data: str | Path) -> list[str]:
    """The int8 plugin's Linears, most sensitive first, scored on the model as the plan's trials run it
    (smoothed first when the plan smooths; static int8 with the plugin's own observer)."""
    from runner.environment import torch_settings
    from runner.plugin import PluginSpec
    from runner.plugin_set import build
    from runner.quant.parts import select_backend
    from runner.quant.sensitivity import module_sensitivity, static_observer

    parts = build(PluginSpec(options.scheme, options.plugin_options)).config.parts  # what the plugin quantizes
    if smoothquant:  # smoothing moves range between activations and weights: rank what int8 will then see
        bundle = Runner.from_bundle(bundle, threads=options.threads, plugins=options.plugins((), True)[:1],
                                    calibration_data=calibration_data).bundle
    with torch_settings(options.threads):  # restores the caller's threads and int8 backend
        select_backend("auto")
        observer = static_observer(options.plugin_options) if options.scheme == "static-int8" else None
        scores = module_sensitivity(bundle, calibration.utterances[:options.ranking_utterances], options.scheme,
                                    observer, parts=parts)
    return [s.name for s in scores]


def tune(bundle: ModelBundle, preloaded: PreloadedSet, calibration: PreloadedSet, options: TuneOptions,
         out: Path, calibration_data: str | Path, progress: Callable[[str], None] = lambda _: None) -> TunePlan:
    """Find the plan: `options.scheme` everywhere but the fewest most sensitive Linears, within the budget.

    The ladder, as Neural Compressor's accuracy-aware tuning climbs it: fp32, then all-int8; if that
    misses the budget and smoothquant is not ruled out, smoothquant + all-int8; if the better of the
    two still misses it, the fewest most sensitive Linears (ranked on that model) kept in float, by
    bisection.

    Args:
        bundle: the float model (every trial runs on a copy).
        preloaded: the tuning utterances (dev, without the calibration ones).
        calibration: the calibration utterances (dev), for the sensitivity ranking.
        options: scheme, budget and search options.
        out: directory for `trials.jsonl`.
        calibration_data: the data root calibrating plugins read (its dev split).
        progress: called with a line after each trial.

    Returns:
        The plan with its figures and every trial.
    """
    check_budget(options.budget)
    trials = _Trials(bundle, preloaded, options, out, calibration_data, progress)
    fp32 = trials.run("fp32", [])

    def within(trial: Trial) -> bool:
        return fp32.bleu - trial.bleu <= options.budget

    starts: dict[bool, Trial] = {}
    for smooth in ([options.smoothquant] if options.smoothquant is not None else [False, True]):
        starts[smooth] = trials.run("smoothquant + all-int8" if smooth else "all-int8", options.plugins((), smooth))
        if within(starts[smooth]):
            break
    smoothquant = max(starts, key=lambda s: (within(starts[s]), starts[s].bleu, not s))  # plain on a tie
    plan_trial, float_modules = starts[smoothquant], []
    if not within(plan_trial):
        ranking = _ranking(bundle, calibration, options, smoothquant, calibration_data)
        measured: dict[int, Trial] = {}
        prefix = "smoothquant + " if smoothquant else ""

        def enough(count: int) -> bool:
            measured[count] = trials.run(f"{prefix}float-top-{count}", options.plugins(ranking[:count], smoothquant),
                                         ranking[:count])
            return within(measured[count])

        count = bisect_fallback(ranking, enough)
        float_modules = ranking[:count]
        plan_trial = measured.get(count) or trials.run(f"{prefix}float-top-{count}",
                                                       options.plugins(float_modules, smoothquant), float_modules)
    first, *then = starts.values()
    return TunePlan(options.scheme, smoothquant, options.budget, preloaded.test_set.split, fp32, first, plan_trial,
                    options.plugins(float_modules, smoothquant), trials.done, len(preloaded.utterances),
                    then[0] if then else None)


def bleu_effects(bundle: ModelBundle, preloaded: PreloadedSet, modules: Sequence[Sequence[str]], scheme: str,
                 threads: int, calibration_data: str | Path,
                 plugin_options: dict[str, Any] | None = None) -> tuple[Trial, list[Trial]]:
    """fp32 on `preloaded`, then `scheme` applied to each module group alone (the int8 plugin's `only`).

    Returns:
        The fp32 trial and one trial per group (its BLEU, and the share of translations that changed).
    """
    options = EvaluateOptions(data=str(preloaded.test_set.path), split=preloaded.test_set.split, warmup=1)
    fp32, reference = measure(bundle, preloaded, options, [], threads, None, calibration_data)
    trials = [measure(bundle, preloaded, options, quant_plugins(scheme, (), False, None,
                                                                {"only": list(group), **(plugin_options or {})}),
                      threads, reference, calibration_data)[0] for group in modules]
    return fp32, trials
