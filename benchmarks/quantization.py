"""What int8 does to BLEU, on a model with outliers and on one without, and what holds it: docs/quantization.md.

    python -m benchmarks.quantization                      # the demo model and its outlier copy -> docs/
    python -m benchmarks.quantization --limit 20 --doc /tmp/q.md --tune-limit 20

For the embedded demo model and its copy with planted outlier channels (`benchmarks.outliers`,
defaults x100 on 4 channels per LayerNorm): fp32, dynamic int8, static int8 with each observer,
smoothquant before each, and the plans `runner tune [--smoothquant]` finds on dev (budget 1 BLEU)
for dynamic and static int8, each decoded on tst-COMMON and tst-HE: BLEU, size, parameters and latency as a
ratio to the same model's fp32 in the same run (one process, schemes one after another, the
same utterances). Calibration and tuning read the dev split only. The page also carries the
outlier model's sensitivity chart (dynamic int8, 8 dev utterances) and the environment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runner import defaults
from runner.environment import manifest

DOC = defaults.REPO_ROOT / "docs" / "quantization.md"
OBSERVERS = ("minmax", "histogram", "percentile", "entropy")
SPLITS = ("tst-COMMON", "tst-HE")


def schemes() -> list[tuple[str, list[Any]]]:
    """(label, plugins) of every fixed scheme the page measures."""
    rows: list[tuple[str, list[Any]]] = [("fp32", []), ("dynamic-int8", ["dynamic-int8"])]
    rows += [(f"static-int8 ({o})", [{"name": "static-int8", "observer": o}]) for o in OBSERVERS]
    rows += [("smoothquant + dynamic-int8", ["smoothquant", "dynamic-int8"])]
    rows += [(f"smoothquant + static-int8 ({o})", ["smoothquant", {"name": "static-int8", "observer": o}])
             for o in OBSERVERS]
    return rows


def tuned(model: str | Path, work: Path, quant: str, limit: int | None, threads: int,
          smoothquant: bool = False) -> tuple[list[Any], str]:
    """The plugins of the plan `runner tune [--smoothquant]` writes for `model` (dev, budget 1 BLEU), and its
    summary line."""
    from typer.testing import CliRunner

    from runner.cli import app
    from runner.config import RunConfig

    work.mkdir(parents=True, exist_ok=True)
    plan = work / f"plan-{quant}{'-smoothquant' if smoothquant else ''}.yaml"
    args = ["tune", "--model", str(model), "--quant", quant, "--max-bleu-drop", "1.0", "--threads", str(threads),
            "--out", str(plan), *(["--limit", str(limit)] if limit else []), *(["--smoothquant"] if smoothquant else [])]
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise SystemExit(f"runner tune failed: {result.output}")
    config = RunConfig.from_yaml(plan)
    kept = next((len(p.values.get("skip", [])) for p in config.plugins if p.name == quant), 0)
    return [{"name": p.name, **p.values} for p in config.plugins], f"{kept} Linear(s) kept in float"


def measure(model: str | Path, plugins: list[Any], limit: int | None, threads: int) -> dict[str, Any]:
    """BLEU on both test splits, size, parameters and mean latency of one scheme."""
    from runner.runner import Runner

    runner = Runner(model, threads=threads, plugins=plugins, calibration_data=defaults.data_path())
    row: dict[str, Any] = {}
    for split in SPLITS:
        report = runner.evaluate(split=split, limit=limit)
        row[split] = report.bleu.score
        row.setdefault("latency", []).append(report.metrics.latency.mean)
        row["size_mb"], row["parameters"] = report.metrics.size_mb, report.metrics.parameters
    row["latency"] = sum(row["latency"]) / len(row["latency"])
    return row


def model_rows(name: str, model: str | Path, work: Path, limit: int | None, tune_limit: int | None,
               threads: int) -> list[tuple[str, str, dict[str, Any]]]:
    rows = [(name, label, measure(model, plugins, limit, threads)) for label, plugins in schemes()]
    for quant, smoothquant in (("dynamic-int8", False), ("static-int8", False), ("dynamic-int8", True),
                               ("static-int8", True)):
        plugins, note = tuned(model, work / name, quant, tune_limit, threads, smoothquant)
        label = f"tuned {'smoothquant + ' if smoothquant else ''}{quant} plan ({note})"
        rows.append((name, label, measure(model, plugins, limit, threads)))
        print(f"{name}: {rows[-1][1]}", file=sys.stderr)
    return rows


def sensitivity_chart(model: Path, path: Path, threads: int) -> str:
    """The outlier model's sensitivity (dynamic int8) as a PNG; the three worst layers as text."""
    from runner.data import load_test_set, preload
    from runner.environment import torch_settings
    from runner.model import load
    from runner.quant_report import chart
    from runner.quantize import select_engine
    from runner.sensitivity import module_sensitivity, rollup

    bundle = load(model)
    utterances = preload(load_test_set(defaults.data_path(), "dev"), bundle.sample_rate, limit=8).utterances
    with torch_settings(threads):
        select_engine("auto")
        scores = module_sensitivity(bundle, utterances, "dynamic-int8")
    chart(scores[:30], path, "dynamic-int8 on the outlier model")
    worst = [g for g in rollup(scores) if g.kind == "layer"][:3]
    return ", ".join(f"`{g.name}` ({g.sqnr_min_db:.1f} dB)" for g in worst)


def render(rows: list[tuple[str, str, dict[str, Any]]], worst: str, command: str, seconds: float) -> str:
    env = manifest(2)
    lines = ["# Quantization that holds BLEU", "", f"Generated by `{command}` in {seconds / 60:.0f} min, at commit "
             f"{env['runner_commit']}, on the 2-core {env['cpu']} (cpu kind `{env['cpu_kind']}`, flags "
             f"{', '.join(env['cpu_flags'])}), 2 threads, search espnet, beam 5, warm-up 1, batch size 1, "
             "device cpu. Calibration (static int8, smoothquant: 32 dev utterances) and tuning (`runner tune "
             "--max-bleu-drop 1.0`, dev without the calibration utterances) read the dev split only; the "
             "figures are on the test splits. Latency: the mean over both splits after warm-up, as a ratio "
             "to the same model's fp32 in this run (one process, schemes one after another). static-int8 "
             "quantizes its default parts (the ST decoder); dynamic-int8 every part.", "",
             "The outlier model is `python -m benchmarks.outliers --out DIR` (x100 on 4 channels of every "
             "pre-norm LayerNorm, seed 0): the same function in float, the int8 collapse of a trained model.", "",
             "| model | scheme | BLEU tst-COMMON | BLEU tst-HE | size MB | size ratio | parameters | latency ratio |",
             "|---|---|---|---|---|---|---|---|"]
    base: dict[str, dict[str, Any]] = {}
    for model, label, row in rows:
        base.setdefault(model, row)
        ref = base[model]
        lines.append(f"| {model} | {label} | {row['tst-COMMON']:.2f} | {row['tst-HE']:.2f} | {row['size_mb']:.2f} | "
                     f"{row['size_mb'] / ref['size_mb']:.2f}x | {row['parameters']:,} | "
                     f"{row['latency'] / ref['latency']:.2f}x |")
    lines += ["", "## Sensitivity of the outlier model", "",
              "`runner sensitivity --model DIR` (dynamic int8, 8 dev utterances): each Linear quantized alone, the "
              f"SQNR of its output over the real beam-search calls. Worst layers: {worst}.", "",
              "![sensitivity](quantization-sensitivity.png)", "", "## Environment", "", "```",
              *(f"{k}: {v}" for k, v in env.items()), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.outliers import write_outlier_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="utterances per test split [default: all]")
    parser.add_argument("--tune-limit", type=int, default=60, help="dev utterances each tune scores")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        work = Path(root)
        outliers = work / "outlier-model"
        write_outlier_model(defaults.model_path(), outliers)
        worst = sensitivity_chart(outliers, args.doc.parent / "quantization-sensitivity.png", args.threads)
        rows = [*model_rows("embedded", defaults.model_path(), work, args.limit, args.tune_limit, args.threads),
                *model_rows("outliers", outliers, work, args.limit, args.tune_limit, args.threads)]
    command = "python -m benchmarks.quantization " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(rows, worst, command.strip(), time.perf_counter() - started)
    args.doc.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
