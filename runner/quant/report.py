"""Sensitivity and tuning results written out: terminal tables, JSON, CSV, a PNG chart, a plan YAML."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.outputs import write_atomic
from runner.quant.sensitivity import GroupScore, ModuleScore
from runner.quant.tuning import Trial, TunePlan


@dataclass
class Sensitivity:
    """`runner sensitivity`'s result: module and group scores, and the BLEU effect of the worst groups.

    Attributes:
        scheme: the int8 scheme scored.
        conditions: model, data, split, utterances, threads, cpu kind, observer ... (what reproduces it).
        modules: every Linear, worst SQNR first.
        groups: layers then parts, worst first.
        fp32: the fp32 trial on the split (None when no BLEU was measured).
        effects: group name -> its trial with only that group in int8.
    """

    scheme: str
    conditions: dict[str, Any]
    modules: list[ModuleScore]
    groups: list[GroupScore]
    fp32: Trial | None = None
    effects: dict[str, Trial] = field(default_factory=dict)


def sensitivity_table(result: Sensitivity, rows: int = 15) -> str:
    """The terminal view: the worst modules, every layer and part, and the measured BLEU effects."""
    lines = [f"{result.scheme} sensitivity; " + ", ".join(f"{k} {v}" for k, v in result.conditions.items()), "",
             f"{'module (worst first)':60} {'SQNR dB':>8}  calls", ]
    lines += [f"{m.name:60} {m.sqnr_db:8.1f}  {m.calls}" for m in result.modules[:rows]]
    if len(result.modules) > rows:
        lines.append(f"... {len(result.modules) - rows} more (all in sensitivity.csv)")
    lines += ["", f"{'layer / part':40} {'kind':5} {'min dB':>7} {'mean dB':>8} {'dBLEU':>7} {'changed':>8}"]
    for group in result.groups:
        trial = result.effects.get(group.name)
        delta = f"{trial.bleu - result.fp32.bleu:+7.2f}" if trial and result.fp32 else f"{'':7}"
        changed = f"{trial.changed:8.0%}" if trial else f"{'':8}"
        lines.append(f"{group.name:40} {group.kind:5} {group.sqnr_min_db:7.1f} {group.sqnr_mean_db:8.1f} {delta} {changed}")
    if result.fp32 is not None:
        lines.append(f"\nfp32 BLEU on {result.conditions.get('split')}: {result.fp32.bleu:.2f}; dBLEU: that group alone "
                     f"in int8, the rest fp32")
    return "\n".join(lines)


def write_sensitivity(result: Sensitivity, directory: Path) -> list[Path]:
    """sensitivity.json, sensitivity.csv (modules) and sensitivity.png (the worst 30 modules) in `directory`."""
    payload = {"scheme": result.scheme, "conditions": result.conditions,
               "modules": [asdict(m) for m in result.modules], "groups": [asdict(g) for g in result.groups],
               "fp32": asdict(result.fp32) if result.fp32 else None,
               "effects": {name: asdict(trial) for name, trial in result.effects.items()}}
    written = [write_atomic(directory / "sensitivity.json", json.dumps(_strict(payload), indent=1, allow_nan=False))]
    buffer = io.StringIO()
    table = csv.writer(buffer)
    table.writerow(["module", "part", "layer", "sqnr_db", "calls", "rows"])
    table.writerows([m.name, m.part, m.layer, f"{m.sqnr_db:.3f}", m.calls, m.rows] for m in result.modules)
    written.append(write_atomic(directory / "sensitivity.csv", buffer.getvalue()))
    written.append(chart(result.modules[:30], directory / "sensitivity.png", result.scheme))
    return written


def _strict(value: Any) -> Any:
    """`value` with every non-finite float as a string ("inf": an SQNR of an exact module), so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def chart(modules: Sequence[ModuleScore], path: Path, scheme: str) -> Path:
    """A horizontal bar chart of the modules' SQNR, worst on top."""
    import matplotlib

    matplotlib.use("Agg")  # no display; and only for this figure (pyplot is not used)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 0.28 * max(len(modules), 4) + 1.2))
    axes = figure.add_subplot()
    names = [m.name for m in modules][::-1]
    axes.barh(names, [min(m.sqnr_db, 80.0) for m in modules][::-1], color="#4c72b0")
    axes.set_xlabel("SQNR of the module's output, dB (higher: int8 is safer)")
    axes.set_title(f"{scheme}: each Linear quantized alone")
    axes.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def plan_summary(plan: TunePlan) -> str:
    """The terminal view of a tuned plan."""
    kept = plan.plan.float_modules

    def row(label: str, trial: Trial) -> str:
        return (f"  {label:22} BLEU {trial.bleu:6.2f}  size {trial.size_mb:7.2f} MB  latency "
                f"{trial.latency_mean / plan.fp32.latency_mean:.2f}x")

    lines = [f"tuned {plan.scheme}{' with smoothquant' if plan.smoothquant else ''} on {plan.split}, budget "
             f"{plan.budget:g} BLEU: {plan.translations} translations over {len(plan.trials)} trials",
             row("fp32", plan.fp32), row("all int8", plan.all_int8)]
    if plan.smoothed_all_int8 is not None:
        lines.append(row("smoothquant + all int8", plan.smoothed_all_int8))
    lines.append(row("plan", plan.plan) + " (one run each; ratios to fp32's)")
    smoothing = " after smoothquant" if plan.smoothquant else ""
    if kept:
        lines.append(f"  kept in float{smoothing} ({len(kept)}): " + ", ".join(kept[:6])
                     + (" ..." if len(kept) > 6 else ""))
    else:
        lines.append(f"  every module stays in int8{smoothing}: it costs "
                     f"{plan.fp32.bleu - plan.plan.bleu:.2f} BLEU, within the budget")
    return "\n".join(lines)


def measured_under(threads: int, **fields: Any) -> dict[str, Any]:
    """What a sensitivity or tuning result was measured under, for its JSON and its plan's header: `fields`
    (model, data, split, utterances, ...), then the threads, CPU kind and int8 backend, named as a run's
    conditions (`runner.conditions.RunConditions`) name them."""
    import torch

    from runner.environment import cpu_kind

    return {**fields, "threads": threads, "cpu_kind": cpu_kind(), "int8_backend": torch.backends.quantized.engine}


def write_plan(plan: TunePlan, path: Path, model: str | None, conditions: dict[str, Any]) -> Path:
    """The plan as a run config YAML, its figures in a comment header."""
    smoothed = plan.smoothed_all_int8
    header = [f"# runner tune: {plan.scheme}{' + smoothquant' if plan.smoothquant else ''}, budget {plan.budget:g} BLEU "
              f"on {plan.split}", f"# dev BLEU: fp32 {plan.fp32.bleu:.2f}, all int8 {plan.all_int8.bleu:.2f}, "
              + (f"smoothquant + all int8 {smoothed.bleu:.2f}, " if smoothed else "")
              + f"this plan {plan.plan.bleu:.2f}; size {plan.plan.size_mb:.2f} MB (fp32 {plan.fp32.size_mb:.2f})",
              "# " + ", ".join(f"{k} {v}" for k, v in conditions.items()),
              "# Report it on a test split: runner translate --config THIS_FILE --split tst-COMMON"]
    body = yaml.safe_dump(plan.run_config(model), sort_keys=False, allow_unicode=True)
    return write_atomic(path, "\n".join(header) + "\n" + body)
