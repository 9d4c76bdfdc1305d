"""ONNX Runtime's own profile of one decoder step: where a step's time goes, by operator type.

    python -m benchmarks.ort_profile --export DIR            # an export of `runner export`
    python -m benchmarks.ort_profile --export DIR --calls 50 --threads 1 --graph st_step

Records the inputs the step graph receives while the export decodes one demo utterance on the
`onnxruntime` engine, then runs that step `--calls` times with ONNX Runtime's profiler on, and sums
the kernel time per operator type (MatMulInteger, DynamicQuantizeLinear, MatMul, Softmax, ...).
`benchmarks.seed_scale` prints this table for its ONNX Runtime schemes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from runner import defaults
from runner.data import load_test_set, preload


def step_feeds(export: Path, graph: str, threads: int) -> dict[str, Any]:
    """The inputs of one real call of `graph`: a middle step of one demo utterance's search."""
    from runner.ort.quantize import record_inputs

    utterance = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000, limit=1).utterances
    recorded = record_inputs(export, utterance, threads)[graph]
    return recorded[len(recorded) // 2]


def profile(export: Path, graph: str = "st_step", calls: int = 50, threads: int = 1) -> list[tuple[str, float, int]]:
    """(operator type, mean microseconds per step, nodes of that type) over `calls` profiled calls, slowest first."""
    import onnxruntime

    feeds = step_feeds(export, graph, threads)
    manifest = json.loads((export / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as work:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "step")
        session = onnxruntime.InferenceSession(str(export / manifest["graphs"][graph]["file"]), options)
        for _ in range(calls):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kind = event["args"].get("op_name", "?")
            totals[kind] += event["dur"]
            nodes[kind].add(event["name"])
    return sorted(((kind, total / calls, len(nodes[kind])) for kind, total in totals.items()), key=lambda r: -r[1])


def table(rows: list[tuple[str, float, int]], top: int = 12) -> str:
    """The profile as a Markdown table (the `top` slowest operator types, the rest summed)."""
    total = sum(r[1] for r in rows)
    lines = ["| operator type | µs per step | share | nodes |", "|---|---|---|---|"]
    lines += [f"| {kind} | {micro:.0f} | {micro / total:.0%} | {count} |" for kind, micro, count in rows[:top]]
    rest = rows[top:]
    if rest:
        lines.append(f"| {len(rest)} other types | {sum(r[1] for r in rest):.0f} | "
                     f"{sum(r[1] for r in rest) / total:.0%} | {sum(r[2] for r in rest)} |")
    lines.append(f"| all kernels | {total:.0f} | 100% | {sum(r[2] for r in rows)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="a `runner export` directory")
    parser.add_argument("--graph", default="st_step")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(table(profile(args.export, args.graph, args.calls, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
