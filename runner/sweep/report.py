"""A sweep's outputs: summary.md, results.csv, results.json, bleu_latency.png and size.png."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from runner.metrics.bleu import paired_bootstrap
from runner.plugin_set import number_format_plugins

CSV_COLUMNS = ("label", "status", "hop", "quant", "dtype", "size_mb", "parameters", "bleu", "bleu_delta", "p_value",
               "chrf", "source_wer", "latency_mean", "latency_std", "latency_p50", "latency_p90", "latency_p99", "rtf",
               "cv", "repeats", "calibration_seconds", "n", "timed", "threads", "warmup", "int8_backend", "cpu", "device",
               "gpu", "gpu_peak_memory_bytes",
               "executor", "host", "attempts", "config_hash", "reason", "error_type", "error_cause")


def _atomic_write(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(temporary, path)


def baseline_key(row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A row's grid point without its number format (the `quant` key and number-format plugins' options)."""
    formats = number_format_plugins()
    point = row.get("point") or {"hop": row.get("hop")}  # rows written before points were recorded
    return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in point.items()
                        if key != "quant" and key.split(".", 1)[0] not in formats))


def add_comparisons(rows: list[dict[str, Any]], references: list[str]) -> None:
    """BLEU difference to the float row of the same grid point but for the number format, with
    sacrebleu's paired-bootstrap p-value."""
    floats = {baseline_key(r): r for r in rows if r.get("status") == "ok" and r["quant"] == "none"}
    for row in rows:
        baseline = floats.get(baseline_key(row))
        if row.get("status") != "ok" or baseline is None or baseline is row:
            row["bleu_delta"], row["p_value"] = None, None
            continue
        row["bleu_delta"] = row["bleu"] - baseline["bleu"]
        same = row["hypotheses"] == baseline["hypotheses"]  # no difference to test: p is 1 by definition
        row["p_value"] = 1.0 if same else paired_bootstrap(baseline["hypotheses"], row["hypotheses"], references)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def summary_markdown(rows: list[dict[str, Any]], env: dict[str, Any], config: Any) -> str:
    """The sweep's summary.md: how it was measured (model, data, machine, engine, batch, warm-up), the table."""
    repeats = config.repeats
    device = config.run.device + (f" ({env['gpu']})" if env.get("gpu") else "")
    lines = [
        f"# Sweep: {config.source}",
        "",
        f"Model `{env['model']}` (sha256 {env['model_content_hash']}), data `{env['data']}` split {env['split']}, "
        f"N={env['n']} (audio hash {env['data_content_hash']}); device {device}; threads {env['threads']}, "
        f"search {'per grid point' if 'search' in config.grid else config.run.search}, "
        f"batch {config.run.evaluate.batch_size}, warm-up {config.run.evaluate.warmup}, {repeats} repeat(s)"
        f"{' interleaved' if env.get('executor', 'local') == 'local' else ' per Ray task'}; "
        f"executor {env.get('executor', 'local')}; driver CPU {env['cpu']}"
        f"{', cpu kind `' + env['cpu_kind'] + '`' if env.get('cpu_kind') else ''}; torch "
        f"{env['versions']['torch']}, espnet {env['versions']['espnet']}; st-runner {env.get('runner')} "
        f"at commit {env.get('runner_commit') or 'unknown'}.",
        "",
        "Latency: mean seconds per utterance over the timed utterances"
        + (" (median of the per-repeat means; CV across repeats)" if repeats > 1 else "")
        + ". ΔBLEU: against the float row of the same grid point (every grid key but the number format); "
        "p: sacrebleu paired bootstrap (1000 samples).",
        "",
    ]
    codes = {json.dumps(r["versions"], sort_keys=True) for r in rows if r.get("versions")}
    if len(codes) > 1:
        lines += [f"**These rows were measured by {len(codes)} versions of the code (resumed with "
                  f"--allow-mixed-versions); each row's `versions` in results.json says which.**", ""]
    if config.measure == "quality":
        lines += ["Quality pass (`measure: quality`): BLEU, chrF and WER only; no latency was measured.", ""]
    groups = machine_groups(rows) if config.measure == "latency" else {"": rows}
    if len(groups) > 1:
        lines += [f"**Latency was measured on {len(groups)} machine types: compare latency only within one table.**",
                  ""]
    for cpu, group in groups.items():
        if len(groups) > 1:
            lines += [f"### Measured on {cpu} ({len(group)} run(s))", ""]
        lines += _table(group, repeats) + [""]
    lines.pop()
    calibrated = [r for r in rows if r.get("calibration_seconds")]
    if calibrated:
        lines += ["", "Calibration time (not part of latency): "
                  + "; ".join(f"{r['label']}: {r['calibration_seconds']:.1f} s" for r in calibrated) + "."]
    lines += ["", f"Reproduce: `runner sweep {config.source}` (this run's command line: `{env['command']}`)", ""]
    return "\n".join(lines)


def machine_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by the CPU model that timed them (failed rows, which have none, join the first group)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("cpu"):
            groups.setdefault(row["cpu"], []).append(row)
    failed = [r for r in rows if not r.get("cpu")]
    if not groups:
        return {"": failed}
    groups[next(iter(groups))] += failed
    return groups


def _table(rows: list[dict[str, Any]], repeats: int) -> list[str]:
    lines = [
        "| config | Q | dtype | size MB | params | BLEU | ΔBLEU (p) | latency mean s | std | p90 | RTF |"
        + (" CV |" if repeats > 1 else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if repeats > 1 else ""),
    ]
    for r in rows:
        if r.get("status") != "ok":
            kind = f"{r['error_type']}: " if r.get("error_type") not in (None, "RunnerError") else ""
            lines.append(f"| {r['label']} | failed: {kind}{r.get('reason', '')} |" + " |" * 9)
            continue
        delta = "-" if r["bleu_delta"] is None else f"{r['bleu_delta']:+.2f} ({r['p_value']:.3f})"
        q = "-" if r["quant"] == "none" else r["quant"]
        cells = [r["label"], q, r["dtype"], _fmt(r["size_mb"]), _fmt(r["parameters"]), _fmt(r["bleu"]), delta,
                 _fmt(r["latency_mean"], 3), _fmt(r["latency_std"], 3), _fmt(r["latency_p90"], 3), _fmt(r["rtf"], 3)]
        if repeats > 1:
            cells.append(_fmt(r["cv"], 3))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    timed = [r for r in ok if r["latency_mean"] is not None]  # none in a quality pass
    schemes = sorted({r["quant"] for r in ok}, key=lambda q: (q != "none", q))
    hops = sorted({r["hop"] for r in ok if r["hop"] is not None})
    colours = dict(zip(schemes, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    markers = dict(zip(hops, "osD^v<>ph*"))
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for r in timed:
        axes.scatter(r["latency_mean"], r["bleu"], color=colours[r["quant"]], marker=markers.get(r["hop"], "o"), s=60)
    for q in schemes:
        axes.scatter([], [], color=colours[q], marker="s", label="float32" if q == "none" else q)
    for h in hops:
        axes.scatter([], [], color="grey", marker=markers[h], label=f"hop {h}")
    axes.set_xlabel("mean latency per utterance (s)")
    axes.set_ylabel("BLEU")
    axes.set_title("BLEU against latency")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    if timed:
        figure.savefig(out / "bleu_latency.png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 3.5))
    sizes = {q: max(r["size_mb"] for r in ok if r["quant"] == q) for q in schemes}
    axes.bar([("float32" if q == "none" else q) for q in schemes], [sizes[q] for q in schemes],
             color=[colours[q] for q in schemes])
    axes.set_ylabel("state_dict size (MB)")
    axes.set_title("Model size per scheme")
    figure.tight_layout()
    figure.savefig(out / "size.png", dpi=120)
    plt.close(figure)


def write_outputs(out: Path, rows: list[dict[str, Any]], preloaded: Any, config: Any) -> None:
    """summary.md, results.csv, results.json and the plots, from the rows in plan order."""
    references = [u.segment.reference for u in preloaded.utterances]
    add_comparisons(rows, references)
    env = json.loads((out / "env.json").read_text(encoding="utf-8"))
    _atomic_write(out / "summary.md", summary_markdown(rows, env, config))
    document = {"env": env, "references": references, "ids": [u.segment.id for u in preloaded.utterances],
                "rows": rows}
    _atomic_write(out / "results.json", json.dumps(document, ensure_ascii=False, indent=2))
    handle, temporary = tempfile.mkstemp(dir=out, prefix=".results.csv.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, out / "results.csv")
    if any(r.get("status") == "ok" for r in rows):
        plot(rows, out)
