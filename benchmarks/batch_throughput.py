"""Evaluation throughput with batched decoding, against one-at-a-time ESPnet fp32, on the demo set and at seed scale.

    python -m benchmarks.batch_throughput                       # both sets, batch 8, 3 repeats, 2 threads
    python -m benchmarks.batch_throughput --sets demo --repeats 1

Each scheme is a `Runner` evaluating the same preloaded utterances through `evaluate_preloaded`
(the path `runner translate --batch-size N` takes), in interleaved order per repeat. Throughput is
timed utterances per second of decoding wall time (`Report.metrics.throughput`); ratios are to
ESPnet's own search at fp32, one utterance at a time, in the same repeat: min / median / max.
Every scheme's translations are compared with its batch-1 twin (same plugins) and must be equal.
Results go to docs/batch-throughput.md (or --doc).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import environment_block, publish
from benchmarks.common import SEED_SCALE_CONFIG as CONFIG
from benchmarks.common import build_model, espnet, lean, ort, Scheme, scheme_runner
from benchmarks.common import decode_options as seed_decode_options
from benchmarks.seed_scale import STATIC_ALL
from runner import defaults
from runner.data import PreloadedSet, load_test_set, preload
from runner.decode import DecodeOptions
from runner.device import resolve as resolve_device
from runner.environment import manifest
from runner.model import load
from runner.options import EvaluateOptions
from runner.runner import Runner

BASELINE = "espnet fp32"
SCHEMES: dict[str, Scheme] = {
    BASELINE: espnet(),
    "lean fp32": lean(),
    "lean dynamic-int8": lean("dynamic-int8"),
    "lean static-int8-all": lean(STATIC_ALL),
    "ort fp32": ort("none"),
    "ort dynamic-int8": ort("dynamic-int8"),
    "ort static-int8": ort("static-int8"),
}


def prepare(name: str, threads: int, limit: int | None,
            device: torch.device) -> tuple[str, dict[str, Runner], PreloadedSet]:
    """The set's description, a runner per scheme (that runs on `device`) over one loaded model, and its
    preloaded utterances."""
    if name == "demo":
        bundle = load(defaults.model_path(), DecodeOptions(), device=device)
        description = "the embedded demo model (trained) on the embedded demo tst-COMMON"
    else:
        config = yaml.safe_load(CONFIG.read_text())
        bundle = load(build_model(config), seed_decode_options(config), device=device)
        description = (f"the seed-scale model (`configs/models/seed-scale.yaml`, random weights, exactly "
                       f"{config['asr_steps']} ASR and {config['st_steps']} ST steps per utterance)")
    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), bundle.sample_rate, limit=limit)
    runners = {name: scheme_runner(bundle, scheme, threads=threads, calibration_data=defaults.data_path())
               for name, scheme in SCHEMES.items() if scheme.runs_on(device.type)}
    return description, runners, test


def evaluate(runner: Runner, test: PreloadedSet, batch: int, warmup: int) -> Any:
    return runner.evaluate_preloaded(test, EvaluateOptions(warmup=warmup, batch_size=batch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="demo,seed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--demo-utterances", type=int, default=None, help="default: all 100")
    parser.add_argument("--seed-utterances", type=int, default=17, help="1 warm-up + 2 batches of 8")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CPU-only schemes are left out)")
    parser.add_argument("--doc", type=Path, default=None,
                        help="default: docs/batch-throughput.md, or docs/batch-throughput-cuda.md on a GPU")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    args.doc = args.doc or defaults.REPO_ROOT / "docs" / (
        "batch-throughput.md" if args.device.type == "cpu" else "batch-throughput-cuda.md")
    sections = []
    for name in args.sets.split(","):
        limit = args.demo_utterances if name == "demo" else args.seed_utterances
        description, runners, test = prepare(name, args.threads, limit, args.device)
        runs = [(scheme, 1) for scheme in runners] + [(scheme, args.batch) for scheme in runners if scheme != BASELINE]
        for scheme, batch in runs:  # untimed: calibration, packed weights for this batch's rows
            runner = runners[scheme]
            if batch > 1:
                runner.translate_batch([u.waveform for u in test.utterances[:batch]], runner.sample_rate)
            else:
                runner.translate(test.utterances[0].waveform, runner.sample_rate)
        results: dict[tuple[str, int], list[Any]] = {}
        for repeat in range(args.repeats):
            for scheme, batch in runs:  # interleaved
                report = evaluate(runners[scheme], test, batch, args.warmup)
                results.setdefault((scheme, batch), []).append(report)
                print(f"{name} repeat {repeat + 1} {scheme} batch {batch}: "
                      f"{report.metrics.throughput.utterances_per_second:.2f} utt/s", file=sys.stderr)
        sections.append(render_set(name, description, test, results, args))
    text = render(sections, args)
    publish(args.doc, text)
    return 0


def render_set(name: str, description: str, test: PreloadedSet, results: dict[tuple[str, int], list[Any]],
               args: argparse.Namespace) -> str:
    base = results[(BASELINE, 1)]
    lines = [f"## {name}: {description}", "",
             f"{len(test.utterances)} utterances ({test.audio_seconds:.1f} s of audio), {args.warmup} of them "
             f"warm-up (a batch of their own), {args.threads} threads, device {args.device}.", "",
             "| scheme | batch | utterances/s (median) | audio s/s | throughput ratio to ESPnet fp32 batch 1, "
             "min / med / max | latency per utterance s (median) | BLEU | same translations as batch 1 |",
             "|---|---|---|---|---|---|---|---|"]
    for (scheme, batch), reports in results.items():
        ratios = sorted(r.metrics.throughput.utterances_per_second / b.metrics.throughput.utterances_per_second
                        for r, b in zip(reports, base))
        speed = statistics.median(r.metrics.throughput.utterances_per_second for r in reports)
        audio = statistics.median(r.metrics.throughput.audio_seconds_per_second for r in reports)
        latency = statistics.median(r.metrics.latency.mean for r in reports)
        alone = results[(scheme, 1)][0].hypotheses()
        same = "yes" if all(r.hypotheses() == alone for r in reports) else "NO"
        lines.append(f"| {scheme} | {batch} | {speed:.2f} | {audio:.1f} | {ratios[0]:.2f}x / "
                     f"{statistics.median(ratios):.2f}x / {ratios[-1]:.2f}x | {latency:.3f} | "
                     f"{reports[0].bleu.score:.2f} | {same} |")
    return "\n".join(lines)


def render(sections: list[str], args: argparse.Namespace) -> str:
    command = "python -m benchmarks.batch_throughput " + " ".join(sys.argv[1:])
    env = manifest(args.threads, device=args.device)
    return "\n".join([
        "# Batched decoding: evaluation throughput", "",
        f"Generated by `{command.strip()}`: {args.repeats} repeat(s) in interleaved order. Throughput is timed "
        "utterances per second of decoding wall time (a batch's wall time counts once); latency per utterance is "
        "its batch's wall time. `same translations` compares every repeat's hypotheses with the scheme's batch-1 "
        "run.", "", "\n\n".join(sections), "", *environment_block(env)])


if __name__ == "__main__":
    raise SystemExit(main())
