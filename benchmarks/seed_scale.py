"""Size and latency of every plugin on a seed-scale (about 58 M parameter) multi-decoder model.

    python -m benchmarks.seed_scale                      # 20 utterances, threads 1 and 2, 3 repeats
    python -m benchmarks.seed_scale --utterances 2 --repeats 1 --threads 2 --schemes fp32,dynamic-int8
    python -m benchmarks.seed_scale --device cuda --threads 2   # the schemes that run on a GPU -> docs/benchmarks-cuda.md

Schemes run in interleaved order (fp32, int8, ..., fp32, int8, ...) on the same preloaded
utterances; every ratio is taken against the fp32 run of the same repeat and thread count,
then summarised as min / median / max over repeats. Results and the environment manifest are
written to docs/benchmarks.md (or --doc).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import (SEED_SCALE_CONFIG, Scheme, build_model, decode_options, environment_block, espnet,
                               exported, lean, ort, publish, scheme_runner)
from runner import defaults
from runner.data import load_test_set, preload
from runner.decode import SEARCH_STAGES, STAGES
from runner.device import PeakMemory
from runner.device import resolve as resolve_device
from runner.environment import manifest
from runner.metrics.size import count_parameters
from runner.model import load
from runner.runner import Runner

STATIC_ALL = {"name": "static-int8", "calibration_size": 4, "granularity": "block",
              "parts": ["encoder", "extra_asr_decoder", "md_encoder", "decoder", "ctc"]}
ONE_SEARCH_THREAD = {"name": "search-threads", "threads": 1}
# The number-format-independent search plugins (configs/fast-search.yaml): the same decoding, less work per step.
FAST_SEARCH: list[Any] = ["cross-kv-cache", "self-kv-cache", "ctc-prefix-scan", ONE_SEARCH_THREAD]
SCHEMES: dict[str, Scheme] = {
    "fp32": espnet(),
    "dynamic-int8": espnet("dynamic-int8"),
    "dynamic-int8-decoders": espnet({"name": "dynamic-int8", "parts": ["extra_asr_decoder", "decoder", "ctc"]}),
    "dynamic-fp16": espnet("dynamic-fp16"),
    "static-int8": espnet({"name": "static-int8", "calibration_size": 4, "granularity": "block"}),
    "static-int8-all": espnet(STATIC_ALL),
    "bf16": espnet("bf16"),
    "cross-kv-cache": espnet("cross-kv-cache"),
    "search-threads-1": espnet(ONE_SEARCH_THREAD),
    "dynamic-int8+kv": espnet("dynamic-int8", "cross-kv-cache"),
    "static-int8-all+kv": espnet(STATIC_ALL, "cross-kv-cache"),
    "dynamic-int8+kv+st1": espnet("dynamic-int8", "cross-kv-cache", ONE_SEARCH_THREAD),
    "static-int8-all+kv+st1": espnet(STATIC_ALL, "cross-kv-cache", ONE_SEARCH_THREAD),
    "self-kv-cache": espnet("self-kv-cache"),
    "ctc-prefix-scan": espnet("ctc-prefix-scan"),
    "fast-search": espnet(*FAST_SEARCH),
    "dynamic-int8+fast": espnet("dynamic-int8", *FAST_SEARCH),
    "static-int8+fast": espnet({"name": "static-int8", "calibration_size": 4, "granularity": "block"}, *FAST_SEARCH),
    "static-int8-all+fast": espnet(STATIC_ALL, *FAST_SEARCH),
    "static-int8-all-noattn+fast": espnet({**STATIC_ALL, "skip": ["*decoder.decoders.*_attn.*"]}, *FAST_SEARCH),
    # The lean engine (runner.lean) in place of ESPnet's search.
    "lean": lean(),
    "dynamic-int8+lean": lean("dynamic-int8"),
    "static-int8+lean": lean({"name": "static-int8", "calibration_size": 4, "granularity": "block"}),
    "static-int8-all+lean": lean(STATIC_ALL),
    "bf16+lean": lean("bf16"),
    "dynamic-fp16+lean": lean("dynamic-fp16"),
    # Small (d x d) attention projections cost more quantized (activation quantization per call) than in fp32.
    "dynamic-int8-noattn+lean": lean({"name": "dynamic-int8", "skip": ["*decoder.decoders.*_attn.*"]}),
    # Half-precision weights and activations: the GPU's number formats (they run, slowly, on this CPU too).
    "half-fp16": espnet("half-fp16"),
    "half-bf16": espnet("half-bf16"),
    "half-fp16+lean": lean("half-fp16"),
    "half-bf16+lean": lean("half-bf16"),
    # ONNX Runtime: the model exported (`runner export --quant Q`), searched by the onnxruntime engine.
    "ort": ort("none"),
    "ort-dynamic-int8": ort("dynamic-int8"),
    "ort-static-int8": ort("static-int8"),
    "ort-dynamic-int8+st1": ort("dynamic-int8", ONE_SEARCH_THREAD),
    "ort-static-int8+st1": ort("static-int8", ONE_SEARCH_THREAD),
}
# Earlier runs' intermediate combinations (docs/benchmarks-run3.md ...) stay runnable by name.
SUPERSEDED = ("dynamic-int8+kv", "static-int8-all+kv", "dynamic-int8+kv+st1", "static-int8-all+kv+st1")
HALF = ("half-fp16", "half-bf16", "half-fp16+lean", "half-bf16+lean")
# Left out of the CPU's default list: GPU formats (half-fp16 stalls for minutes on some utterances on this CPU).
DEFAULT_SCHEMES = [name for name in SCHEMES if name not in SUPERSEDED and name not in HALF]
ANALYSIS = "## Analysis"
CONFIG = SEED_SCALE_CONFIG


def measure(runner: Runner, utterances: list[Any], warmup: int, threads: int, batch_size: int = 1) -> dict[str, Any]:
    """Mean latency and stages through `Runner.translate` (the runner's threads, engine and plugin contexts).

    With `batch_size` > 1, consecutive utterances go through `Runner.translate_batch` (lean schemes);
    latency is then each utterance's batch wall time, and a batch's stage times count once.
    Checks, at every frontend call, that the decode ran on `threads` intra-op threads; on a GPU
    records the most memory the timed decodes held.
    """
    seen: list[int] = []
    # the frontend runs in torch on every engine (ONNX Runtime runs the encoder in its own sessions)
    handle = runner.bundle.model.frontend.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        for utterance in utterances[:warmup]:
            runner.translate(utterance.waveform, utterance.sample_rate)
        with PeakMemory(runner.device) as peak:
            if batch_size == 1:
                batches = [[runner.translate(u.waveform, u.sample_rate)] for u in utterances]
            else:
                batches = [runner.translate_batch([u.waveform for u in utterances[i:i + batch_size]],
                                                  utterances[i].sample_rate)
                           for i in range(0, len(utterances), batch_size)]
    finally:
        handle.remove()
    if set(seen) != {threads}:
        raise RuntimeError(f"decoded on {sorted(set(seen))} threads, expected {threads}")
    results = [r for batch in batches for r in batch]
    return {"mean": statistics.mean(r.seconds for r in results), "threads": seen[0],
            "utterances_per_second": len(results) / sum(batch[0].seconds for batch in batches),
            "peak_bytes": peak.bytes,
            "stages": {s: sum(b[0].stages.get(s, 0.0) for b in batches) / len(results) for s in STAGES},
            "steps": {s: statistics.mean(r.steps.get(s, 0) for r in results) for s in SEARCH_STAGES}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--schemes", default=None, help="default: every scheme that runs on --device (not half on the CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed utterances before each scheme's timing")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=1, help="utterances per search (lean schemes only)")
    parser.add_argument("--doc", type=Path, default=None,
                        help="default: docs/benchmarks.md on the CPU, docs/benchmarks-cuda.md on a GPU")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.doc = args.doc or defaults.REPO_ROOT / "docs" / ("benchmarks.md" if device.type == "cpu" else "benchmarks-cuda.md")
    if args.schemes is None:
        args.schemes = ",".join(DEFAULT_SCHEMES if device.type == "cpu" else
                                [s for s in SCHEMES if s not in SUPERSEDED and SCHEMES[s].runs_on(device.type)])
    schemes = args.schemes.split(",")
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown or "fp32" not in schemes:
        parser.error(f"--schemes must include fp32 and name only {list(SCHEMES)}; got {unknown}")
    if args.batch_size > 1 and any("lean" not in s and not s.startswith("ort") for s in schemes if s != "fp32"):
        parser.error("--batch-size > 1 batches lean and ort schemes only (fp32 runs as 'lean' then)")
    # With batches the baseline batches too, on the lean engine: the same translations as fp32 on ESPnet's.
    measured = {**SCHEMES, "fp32": lean()} if args.batch_size > 1 else SCHEMES
    config = yaml.safe_load(CONFIG.read_text())
    exp = build_model(config)
    float_bundle = load(exp, decode_options(config), device=device)
    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), float_bundle.sample_rate, limit=args.utterances)
    print(f"seed-scale model: {count_parameters(float_bundle.model):,} parameters; "
          f"{len(test.utterances)} utterances, {test.audio_seconds:.1f} s audio", file=sys.stderr)

    runners: dict[str, Runner] = {}
    sizes: dict[str, tuple[float, int]] = {}
    for scheme in schemes:
        started = time.perf_counter()
        runners[scheme] = scheme_runner(float_bundle, measured[scheme])
        runners[scheme].translate(test.utterances[0].waveform, float_bundle.sample_rate)  # static int8 calibrates here
        model = runners[scheme].bundle.model
        # after calibration and conversion; the graphs' bytes on the onnxruntime engine
        sizes[scheme] = (runners[scheme].summary["size_bytes"] / 1e6, count_parameters(model))
        print(f"prepared {scheme} in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        for runner in runners.values():
            runner.threads = threads  # a runner scopes its calls to this count (set only between calls)
        for repeat in range(args.repeats):
            for scheme in schemes:  # interleaved
                measured = measure(runners[scheme], test.utterances, args.warmup, threads, args.batch_size)
                results.setdefault((scheme, threads), []).append(measured)
                last = results[(scheme, threads)][-1]
                print(f"threads {threads} repeat {repeat + 1} {scheme}: {last['mean']:.3f} s", file=sys.stderr)
    text = render(results, sizes, schemes, args, config, count_parameters(float_bundle.model), len(test.utterances),
                  device) + onnxruntime_profiles(float_bundle, schemes)
    previous = args.doc.read_text(encoding="utf-8") if args.doc.is_file() else ""
    if ANALYSIS in previous:  # the hand-written reading of the numbers survives regeneration
        text = text.rstrip("\n") + "\n\n" + previous[previous.index(ANALYSIS):]
    publish(args.doc, text)
    return 0


def onnxruntime_profiles(bundle: Any, schemes: list[str]) -> str:
    """ONNX Runtime's per-operator profile of one ST decoder step (1 thread) of each ONNX Runtime scheme run."""
    from benchmarks.ort_profile import profile, table

    sections = []
    for scheme in schemes:
        export = SCHEMES[scheme].export
        if export is not None:
            rows = profile(exported(bundle, export), "st_step", calls=50, threads=1)
            sections += [f"### {scheme}", "", table(rows), ""]
    if not sections:
        return ""
    return "\n".join(["", "## ONNX Runtime's profile of one ST decoder step", "",
                      "`python -m benchmarks.ort_profile`: a middle step of one demo utterance's ST search, run 50 "
                      "times on 1 thread with ONNX Runtime's profiler; kernel time per operator type.", "", *sections])


def render(results: dict[tuple[str, int], list[dict[str, Any]]], sizes: dict[str, tuple[float, int]],
           schemes: list[str], args: argparse.Namespace, config: dict[str, Any], parameters: int, n: int,
           device: torch.device) -> str:
    env = manifest(device=device)
    command = "python -m benchmarks.seed_scale " + " ".join(sys.argv[1:])
    gpu = env.get("gpu")
    peaks = device.type == "cuda"
    lines = [
        "# Benchmarks at the seed's model scale",
        "",
        f"Generated by `{command.strip()}`. Model: `configs/models/seed-scale.yaml` ({parameters:,} parameters, "
        f"random weights, seed {config['seed']}); {n} utterances of the embedded tst-COMMON; beam {config['beam_size']}"
        f"/ASR beam {config['asr_beam_size']}, exactly {config['asr_steps']} ASR and {config['st_steps']} ST decoding "
        f"steps per utterance; {args.warmup} warm-up utterance(s) per measurement; {args.repeats} repeat(s) in "
        f"interleaved order; device {device}{f' ({gpu})' if gpu else ''}; batch size {args.batch_size}"
        + (" (latency is each utterance's batch wall time; fp32 runs on the lean engine)" if args.batch_size > 1 else "")
        + ". Ratios are to fp32 in the same repeat and thread count: min / median / max.",
        "",
        "| scheme | threads | size MB | size ratio | params | latency s (median) | latency ratio min / med / max |"
        + (" utterances/s | peak GPU MiB |" if peaks else "")
        + "".join(f" {s} |" for s in STAGES) + "".join(f" {s} steps | {s} ms/step |" for s in SEARCH_STAGES),
        "|---|---|---|---|---|---|---|" + ("---|---|" if peaks else "") + "---|" * (len(STAGES) + 2 * len(SEARCH_STAGES)),
    ]
    for threads in sorted({t for _, t in results}):
        base = results[("fp32", threads)]
        for scheme in schemes:
            runs = results[(scheme, threads)]
            ratios = sorted(r["mean"] / b["mean"] for r, b in zip(runs, base))
            median = statistics.median(r["mean"] for r in runs)
            stages = {s: statistics.median(r["stages"][s] for r in runs) for s in STAGES}
            steps = {s: statistics.median(r["steps"][s] for r in runs) for s in SEARCH_STAGES}
            per_step = {s: statistics.median(r["stages"][s] / r["steps"][s] * 1e3 if r["steps"][s] else 0.0
                                             for r in runs) for s in SEARCH_STAGES}
            size, params = sizes[scheme]
            lines.append(
                f"| {scheme} | {threads} | {size:.1f} | {size / sizes['fp32'][0]:.2f}x | {params:,} | {median:.3f} | "
                f"{ratios[0]:.2f} / {statistics.median(ratios):.2f} / {ratios[-1]:.2f} |"
                + (f" {statistics.median(r['utterances_per_second'] for r in runs):.2f} |"
                   f" {max(r['peak_bytes'] for r in runs) / 2**20:.0f} |" if peaks else "")
                + "".join(f" {stages[s]:.3f} |" for s in STAGES)
                + "".join(f" {steps[s]:.1f} | {per_step[s]:.2f} |" for s in SEARCH_STAGES))
    lines += ["", "Stage columns are mean seconds per utterance (median over repeats); steps are each search's "
              "output steps per utterance (`BeamSearch.search` calls, or the lean engine's), ms/step its stage "
              "time per step.", "",
              *environment_block(env)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
