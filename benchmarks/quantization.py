"""What int8 does to BLEU, on a model with outliers and on one without, and what holds it: docs/quantization.md.

    python -m benchmarks.quantization                      # the demo model and its outlier copy -> docs/
    python -m benchmarks.quantization --limit 20 --doc /tmp/q.md --tune-limit 20
    python -m benchmarks.quantization --search espnet --batch-size 1   # ESPnet's search, one at a time (slow)

For the embedded demo model and its copy with planted outlier channels (`benchmarks.outliers`,
defaults x100 on 4 channels per LayerNorm): fp32, dynamic int8, static int8 of every part with
each observer, smoothquant before each, and the plans `runner tune` finds on dev (budget 1 BLEU)
for dynamic and static int8, with its default ladder and with `--no-smoothquant`, each decoded on
tst-COMMON and tst-HE: BLEU, size, parameters and latency as a ratio to the same model's fp32 in
the same run (one process, schemes one after another, the same utterances). Every decode, the tunes'
trials too, runs on one search engine in batches (default: the lean engine, batches of 8: each utterance
what it gets alone, tests/test_batch.py; a fifth of ESPnet's time). Calibration and
tuning read the dev split only. The tuned plans are written to docs/plans/ (the published-figures
test decodes them again). The page also carries the issue's targets, checked on these figures,
the outlier model's sensitivity chart (dynamic int8, 8 dev utterances) and the environment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import environment_block, publish
from runner import defaults
from runner.environment import manifest
from runner.plugin import MODEL_PARTS

DOC = defaults.REPO_ROOT / "docs" / "quantization.md"
OBSERVERS = ("minmax", "histogram", "percentile", "entropy")
SPLITS = ("tst-COMMON", "tst-HE")
ALL_PARTS = list(MODEL_PARTS)
# (quant, tune's --smoothquant flag or None for its default ladder): the plans the page tunes
TUNES = (("dynamic-int8", None), ("static-int8", None), ("dynamic-int8", False), ("static-int8", False))
SEARCH, BATCH = "lean", 8  # the page's default engine and batch size (the page states the ones it ran with)


def schemes() -> list[tuple[str, list[Any]]]:
    """(label, plugins) of every fixed scheme the page measures; static int8 quantizes every part, as tune does."""
    rows: list[tuple[str, list[Any]]] = [("fp32", []), ("dynamic-int8", ["dynamic-int8"])]
    rows += [(f"static-int8 ({o})", [{"name": "static-int8", "observer": o, "parts": ALL_PARTS}]) for o in OBSERVERS]
    rows += [("smoothquant + dynamic-int8", ["smoothquant", "dynamic-int8"])]
    rows += [(f"smoothquant + static-int8 ({o})",
              ["smoothquant", {"name": "static-int8", "observer": o, "parts": ALL_PARTS}]) for o in OBSERVERS]
    return rows


def plan_path(model_name: str, quant: str, smoothquant: bool | None) -> Path:
    """Where the page keeps the plan `runner tune` wrote for a model and scheme."""
    flag = "" if smoothquant is None else "-smoothquant" if smoothquant else "-no-smoothquant"
    return DOC.parent / "plans" / f"{model_name}-{quant}{flag}.yaml"


def tune_args(model: str | Path, quant: str, smoothquant: bool | None, limit: int | None, threads: int,
              out: Path, search: str = SEARCH, batch: int = BATCH) -> list[str]:
    """The `runner tune` arguments of one of the page's plans."""
    flag = [] if smoothquant is None else ["--smoothquant" if smoothquant else "--no-smoothquant"]
    engine = ["--search", search, "--batch-size", str(batch)] if search != "espnet" or batch != 1 else []
    return ["tune", "--model", str(model), "--quant", quant, "--max-bleu-drop", "1.0", "--threads", str(threads),
            *engine, "--out", str(out), *(["--limit", str(limit)] if limit else []), *flag]


def page_engine(text: str) -> tuple[str, int]:
    """The search engine and batch size a generated page says it decoded with."""
    import re

    found = re.search(r"search (\S+), beam \d+, warm-up \d+, batch size (\d+)", text)
    if found is None:
        raise ValueError("the quantization page names no 'search X, beam N, warm-up N, batch size N'")
    return found.group(1), int(found.group(2))


def tuned(model: str | Path, model_name: str, work: Path, quant: str, limit: int | None, threads: int,
          smoothquant: bool | None, keep: Path | None, search: str, batch: int) -> tuple[list[Any], str]:
    """The plugins of the plan `runner tune` writes for `model` (dev, budget 1 BLEU), and a label for its row.

    The plan is copied to `keep` without its machine-specific paths (the model directory and the calibration
    data root, which is the demo corpus the page decodes), for the published-figures test to decode again.
    """
    import yaml
    from typer.testing import CliRunner

    from runner.cli import app

    work.mkdir(parents=True, exist_ok=True)
    plan = work / f"plan-{quant}-{smoothquant}.yaml"
    result = CliRunner().invoke(app, tune_args(model, quant, smoothquant, limit, threads, plan, search, batch))
    if result.exit_code != 0:
        raise SystemExit(f"runner tune failed: {result.output}")
    text = plan.read_text(encoding="utf-8")
    plugins = [{k: v for k, v in p.items() if k != "calibration_data"} for p in yaml.safe_load(text)["plugins"]]
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        header = [line for line in text.splitlines() if line.startswith("#") and "data " not in line]
        command = " ".join(tune_args(f"<{model_name} model>", quant, smoothquant, limit, threads, Path("PLAN"),
                                     search, batch))
        keep.write_text("\n".join([f"# runner {command}", *header[:2],
                                    yaml.safe_dump({"plugins": plugins}, sort_keys=False)]), encoding="utf-8")
    return plugins, plan_label(quant, smoothquant, plugins)


def plan_label(quant: str, smoothquant: bool | None, plugins: list[dict[str, Any]]) -> str:
    """The page's row label of a tuned plan: the tune's flag, whether it smooths, how many Linears stay float."""
    kept = next((len(p.get("skip", [])) for p in plugins if p["name"] == quant), 0)
    smoothing = "smoothquant, " if plugins[0]["name"] == "smoothquant" else ""
    how = "" if smoothquant is None else ", --no-smoothquant" if not smoothquant else ", --smoothquant"
    return f"tuned {quant} plan{how} ({smoothing}{kept} Linear(s) kept in float)"


def measure(model: str | Path, plugins: list[Any], limit: int | None, threads: int, search: str = SEARCH,
            batch: int = BATCH) -> dict[str, Any]:
    """BLEU on both test splits, size, parameters and mean latency of one scheme."""
    from runner.runner import Runner

    runner = Runner(model, threads=threads, plugins=plugins, calibration_data=defaults.data_path(), search=search)
    row: dict[str, Any] = {}
    for split in SPLITS:
        report = runner.evaluate(split=split, limit=limit, batch_size=batch)
        row[split] = report.bleu.score
        if split == SPLITS[0]:  # the targets' paired differences
            row["hypotheses"], row["references"] = report.hypotheses(), report.references()
        row.setdefault("latency", []).append(report.metrics.latency.mean)
        row["size_mb"], row["parameters"] = report.metrics.size_mb, report.metrics.parameters
    row["latency"] = sum(row["latency"]) / len(row["latency"])
    return row


def model_rows(name: str, model: str | Path, work: Path, args: argparse.Namespace,
               keep_plans: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """Every fixed scheme's row and every tuned plan's, for one model."""
    engine = {"search": args.search, "batch": args.batch_size}
    rows = [(name, label, measure(model, plugins, args.limit, args.threads, **engine)) for label, plugins in schemes()]
    for quant, smoothquant in TUNES:
        plugins, label = tuned(model, name, work / name, quant, args.tune_limit, args.threads, smoothquant,
                               plan_path(name, quant, smoothquant) if keep_plans else None, **engine)
        rows.append((name, label, measure(model, plugins, args.limit, args.threads, **engine)))
        print(f"{name}: {rows[-1][1]}", file=sys.stderr)
    return rows


def targets(rows: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """The issue's targets, each checked on `rows` (met or missed, with the figures). "Within N BLEU of fp32" is
    judged as the tests judge it: the paired bootstrap interval of the tst-COMMON difference reaches -N
    (`runner.metrics.paired`; one sentence moves BLEU by about 0.5 on 100)."""
    from runner.metrics.paired import paired_difference

    table = {(model, label): row for model, label, row in rows}
    fp32 = table[("outliers", "fp32")]

    def against_fp32(row: dict[str, Any]) -> Any:
        return paired_difference(fp32["hypotheses"], row["hypotheses"], fp32["references"])

    lines = []
    for quant, all_int8 in (("dynamic-int8", "dynamic-int8"), ("static-int8", "static-int8 (histogram)")):
        label, plan = next((k[1], r) for k, r in table.items()
                           if k[0] == "outliers" and k[1].startswith(f"tuned {quant} plan ("))
        difference = against_fp32(plan)
        size = plan["size_mb"] / fp32["size_mb"]
        slower = plan["latency"] / table[("outliers", all_int8)]["latency"]
        verdict = "met" if difference.holds(1.0) and size <= 0.45 and slower <= 1.10 else "missed"
        lines.append(f"- Outlier model, `runner tune --quant {quant} --max-bleu-drop 1.0` ({label}): tst-COMMON "
                     f"BLEU {plan['tst-COMMON']:.2f} against fp32's {fp32['tst-COMMON']:.2f}, {difference.line()} "
                     f"(target: within 1.0, the interval reaching -1.0); size {size:.2f}x of fp32 (at most 0.45x); "
                     f"latency {slower:.2f}x of all-int8 `{all_int8}`'s (at most 1.10x): **{verdict}**.")
    smoothed = table[("outliers", "smoothquant + dynamic-int8")]
    difference = against_fp32(smoothed)
    lines.append(f"- Outlier model, smoothquant + dynamic-int8 alone: tst-COMMON BLEU {smoothed['tst-COMMON']:.2f}, "
                 f"{difference.line()} (target: within 2.0): **{'met' if difference.holds(2.0) else 'missed'}**.")
    demo = [k[1] for k in table if k[0] == "embedded" and k[1].startswith("tuned ") and "--no-" not in k[1]]
    kept_all = all("smoothquant" not in label and "(0 Linear" in label for label in demo)
    lines.append(f"- Embedded model (no outliers): the tuner keeps every module in int8 without smoothing "
                 f"({'; '.join(demo)}): **{'met' if kept_all else 'missed'}**.")
    return lines


def sensitivity_chart(model: Path, path: Path, threads: int) -> str:
    """The outlier model's sensitivity (dynamic int8) as a PNG; the three worst layers as text."""
    from runner.data import load_test_set, preload
    from runner.environment import torch_settings
    from runner.model import load
    from runner.quant.report import chart
    from runner.quant.parts import select_backend
    from runner.quant.sensitivity import module_sensitivity, rollup

    bundle = load(model)
    utterances = preload(load_test_set(defaults.data_path(), "dev"), bundle.sample_rate, limit=8).utterances
    with torch_settings(threads):
        select_backend("auto")
        scores = module_sensitivity(bundle, utterances, "dynamic-int8")
    chart(scores[:30], path, "dynamic-int8 on the outlier model")
    worst = [g for g in rollup(scores) if g.kind == "layer"][:3]
    return ", ".join(f"`{g.name}` ({g.sqnr_min_db:.1f} dB)" for g in worst)


def render(rows: list[tuple[str, str, dict[str, Any]]], worst: str, command: str, seconds: float,
           search: str, batch: int) -> str:
    """The page: how it was made, the table, the targets, the sensitivity chart and the environment."""
    env = manifest(2)
    lines = ["# Quantization that holds BLEU", "", f"Generated by `{command}` in {seconds / 60:.0f} min, at commit "
             f"{env['runner_commit']}, on the 2-core {env['cpu']} (cpu kind `{env['cpu_kind']}`, flags "
             f"{', '.join(env['cpu_flags'])}), 2 threads, search {search}, beam 5, warm-up 1, batch size {batch}, "
             "device cpu (every decode and every tune's trials; the lean engine gives ESPnet's translations at fp32, "
             "and in a batch each utterance what it gets alone). Calibration (static int8, smoothquant: 32 dev utterances) and tuning (`runner tune "
             "--max-bleu-drop 1.0`, dev without the calibration utterances) read the dev split only; the "
             "figures are on the test splits. Latency: the mean over both splits after warm-up, as a ratio "
             "to the same model's fp32 in this run (one process, schemes one after another). Both int8 schemes "
             "quantize every part here (static-int8 with `parts:` all, as `runner tune` does; the plugin's own "
             "default is the ST decoder). The tuned rows' plans are in [plans/](plans/); `runner tune`'s "
             "default ladder tries smoothquant when all-int8 misses the budget, `--no-smoothquant` goes "
             "straight to keeping the most sensitive Linears in float.", "",
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
    lines += ["", "On the outlier model all-int8 is slower than fp32: its broken translations run to the length "
              "limit, so the latency targets compare with a slow baseline; the embedded model's rows give int8's "
              "speed where it works.", "", "## Targets", "", *targets(rows),
              "", "## Sensitivity of the outlier model", "",
              "`runner sensitivity --model DIR` (dynamic int8, 8 dev utterances): each Linear quantized alone, the "
              f"SQNR of its output over the real beam-search calls. Worst layers: {worst}.", "",
              "![sensitivity](quantization-sensitivity.png)", "", *environment_block(env)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.outliers import write_outlier_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="utterances per test split [default: all]")
    parser.add_argument("--tune-limit", type=int, default=None,
                        help="dev utterances each tune scores [default: tune's own, all dev but the calibration ones]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search", default=SEARCH, help=f"search engine of every decode [default: {SEARCH}]")
    parser.add_argument("--batch-size", type=int, default=BATCH, help=f"utterances per search [default: {BATCH}]")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        work = Path(root)
        outliers = work / "outlier-model"
        write_outlier_model(defaults.model_path(), outliers)
        worst = sensitivity_chart(outliers, args.doc.parent / "quantization-sensitivity.png", args.threads)
        keep = args.doc == DOC  # a trial run elsewhere leaves the published plans alone
        rows = [*model_rows("embedded", defaults.model_path(), work, args, keep),
                *model_rows("outliers", outliers, work, args, keep)]
    command = "python -m benchmarks.quantization " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(rows, worst, command.strip(), time.perf_counter() - started, args.search, args.batch_size)
    publish(args.doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
