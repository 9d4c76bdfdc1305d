"""Load on `runner serve` over loopback: throughput, latency percentiles, 503s and memory, batching off vs on.

    python -m benchmarks.serve_load                         # demo model and seed scale, 8 clients
    python -m benchmarks.serve_load --models demo --requests 100

For each server configuration a `runner serve` process starts on a free loopback port and warms
up (GET /ready); concurrent clients then post demo test utterances in a closed loop (each sends its
next request when its last one is answered) until `--requests` are answered or `--seconds` pass.
Every figure is from the clients' side (request sent to answer read), except memory: the server's
resident set (VmRSS) before the first request and after the last. An overload pass follows with
more clients than the queue holds (`--overload-clients` against `--max-queue`), to show when 503s
appear. Results go to docs/serve-load.md (or --doc).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import soundfile
import yaml

from benchmarks.common import environment_block, publish, rss
from benchmarks.live_server import live_server
from runner import defaults
from runner.data import load_test_set, preload
from runner.device import resolve as resolve_device
from runner.environment import manifest
from runner.plugin_set import PluginSet
from runner.metrics.latency import percentile


SERVERS: dict[str, list[str]] = {
    "espnet one-at-a-time": [],
    "lean one-at-a-time": ["--search", "lean"],
    "lean batch<=8": ["--search", "lean", "--max-batch", "8", "--max-wait-ms", "10"],
    "lean+dynamic-int8 batch<=8": ["--search", "lean", "--quant", "dynamic-int8", "--max-batch", "8",
                                   "--max-wait-ms", "10"],
    # ONNX Runtime over the served model's fp32 graphs (exported once into the cache by the server)
    "onnxruntime batch<=8": ["--search", "onnxruntime", "--max-batch", "8", "--max-wait-ms", "10"],
}
BASELINE = "espnet one-at-a-time"  # the server as it was before batching


@dataclass
class LoadResult:
    clients: int
    statuses: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # answered (200) requests
    batch_sizes: list[int] = field(default_factory=list)
    wall: float = 0.0
    memory_before: int = 0
    memory_after: int = 0
    memory_ready: int = 0  # before any request (after warm-up), for the main pass

    @property
    def throughput(self) -> float:
        return len(self.seconds) / self.wall if self.wall else 0.0


async def drive(url: str, bodies: list[bytes], clients: int, requests: int, seconds: float,
                result: LoadResult) -> None:
    """`clients` closed-loop clients posting `bodies` in turn until `requests` are answered or `seconds` pass."""
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            body = bodies[issued % len(bodies)]
            issued += 1
            started = time.perf_counter()
            response = await http.post(f"{url}/translate", content=body)
            result.statuses.append(response.status_code)
            if response.status_code == 200:
                result.seconds.append(time.perf_counter() - started)
                result.batch_sizes.append(response.json()["latency"].get("batch", {"size": 1})["size"])
            elif response.status_code == 503:
                await asyncio.sleep(0.05)  # a real client would honour Retry-After; this one retries soon

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*[client(http) for _ in range(clients)])
    result.wall = time.perf_counter() - started


def quants(flags: list[str]) -> list[str]:
    """The number-format plugins a server's `runner serve` flags name (`--quant NAME`)."""
    return [value for option, value in zip(flags, flags[1:]) if option == "--quant"]


def run_server(flags: list[str], model: list[str], bodies: list[bytes], args: argparse.Namespace, log: Path,
               source: Path | None = None) -> tuple[LoadResult, LoadResult]:
    """The main load (after an untimed warm pass) and the overload pass against one server configuration."""
    options = [*model, *flags, "--threads", str(args.threads), "--max-queue", str(args.max_queue)]
    if source is None:  # the server before this work (`--before`) knows no --device: it runs on the CPU
        options += ["--device", args.device]
    processes: list[Any] = []
    with live_server(log, *options, processes=processes, cwd=source) as url:
        pid = processes[0].pid
        ready = rss(pid)
        if args.warm_requests:  # real requests of every length: buffers a 2 s warm-up of silence never needed
            asyncio.run(drive(url, bodies, args.clients, args.warm_requests, args.seconds, LoadResult(args.clients)))
        main = LoadResult(args.clients, memory_before=rss(pid), memory_ready=ready)
        asyncio.run(drive(url, bodies, args.clients, args.requests, args.seconds, main))
        main.memory_after = rss(pid)
        overload = LoadResult(args.overload_clients, memory_before=rss(pid))
        asyncio.run(drive(url, bodies, args.overload_clients, args.overload_requests, args.seconds, overload))
        overload.memory_after = rss(pid)
    return main, overload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="demo,seed")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500, help="per server (seed scale: --seed-requests)")
    parser.add_argument("--seed-requests", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=240.0, help="time bound per pass")
    parser.add_argument("--overload-clients", type=int, default=12)
    parser.add_argument("--overload-requests", type=int, default=84)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm-requests", type=int, default=50, help="untimed requests before the main pass")
    parser.add_argument("--before", type=Path, default=None,
                        help="also serve one at a time from this checkout (a git worktree of the commit before "
                             "batching), as the baseline of the ratios")
    parser.add_argument("--device", default="cpu", help="the servers' --device (CPU-only schemes are left out on cuda)")
    parser.add_argument("--doc", type=Path, default=None,
                        help="default: docs/serve-load.md, or docs/serve-load-cuda.md on a GPU")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)  # a GPU asked for where there is none fails here, in one line
    args.device = str(device)
    args.doc = args.doc or defaults.REPO_ROOT / "docs" / ("serve-load.md" if device.type == "cpu" else "serve-load-cuda.md")
    servers = args.servers.split(",")
    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), 16000)
    bodies = []
    for utterance in test.utterances:
        buffer = io.BytesIO()
        soundfile.write(buffer, utterance.waveform, 16000, format="WAV", subtype="PCM_16")
        bodies.append(buffer.getvalue())
    sections = []
    for model_name in args.models.split(","):
        model = [] if model_name == "demo" else ["--model", str(_seed_model())]
        requests = args.requests if model_name == "demo" else args.seed_requests
        run_args = argparse.Namespace(**{**vars(args), "requests": requests,
                                         "warm_requests": min(args.warm_requests, requests // 3),
                                         "overload_requests": min(args.overload_requests, requests)})
        results = {}
        runs = [(name, SERVERS[name], None) for name in servers
                if PluginSet.resolve(quants(SERVERS[name])).runs_on(device.type)]
        if args.before is not None:
            commit = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], check=True,
                                    capture_output=True, text=True).stdout.strip()
            runs.insert(0, (f"espnet one-at-a-time at {commit} (before)", [], args.before))
        for name, flags, source in runs:
            print(f"{model_name}: {name} ...", file=sys.stderr)
            results[name] = run_server(flags, model, bodies, run_args, Path(f"/tmp/serve-load-{model_name}.log"),
                                       source)
            main_result = results[name][0]
            print(f"  {main_result.throughput:.2f} req/s, statuses {sorted(set(main_result.statuses))}",
                  file=sys.stderr)
        sections.append(render_model(model_name, results, run_args))
    text = render(sections, args)
    publish(args.doc, text)
    return 0


def _seed_model() -> Path:
    from benchmarks.common import SEED_SCALE_CONFIG as CONFIG
    from benchmarks.common import build_model

    return build_model(yaml.safe_load(CONFIG.read_text()))


def _row(name: str, result: LoadResult, baseline: LoadResult | None) -> str:
    answered = len(result.seconds)
    total = len(result.statuses)
    busy = result.statuses.count(503)
    other = sorted({s for s in result.statuses if s not in (200, 503)})
    latency = result.seconds or [0.0]
    growth = (result.memory_after - result.memory_before) / result.memory_before
    ratio = f"{result.throughput / baseline.throughput:.2f}x" if baseline and baseline.throughput else "n/a"
    return (f"| {name} | {result.clients} | {answered} of {total} | {result.throughput:.2f} | {ratio} | "
            f"{percentile(latency, 50):.3f} | {percentile(latency, 90):.3f} | {percentile(latency, 99):.3f} | "
            f"{100 * busy / total if total else 0:.1f} % | {', '.join(map(str, other)) or 'none'} | "
            f"{statistics.mean(result.batch_sizes) if result.batch_sizes else 0:.2f} | "
            + (f"{result.memory_ready / 1e6:.0f} / " if result.memory_ready else "")
            + f"{result.memory_before / 1e6:.0f} -> {result.memory_after / 1e6:.0f} MB ({100 * growth:+.1f} %) |")


def render_model(model_name: str, results: dict[str, tuple[LoadResult, LoadResult]], args: argparse.Namespace) -> str:
    baseline_name = next(iter(results)) if "(before)" in next(iter(results)) else BASELINE
    header = (f"| server | clients | answered (200) of sent | requests/s | ratio to {baseline_name} | "
              "p50 s | p90 s | p99 s | 503 | other errors | mean batch | server memory (main: ready / before -> after) |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|"
    base = next(iter(results.values())) if "(before)" in next(iter(results)) else results.get(BASELINE)
    title = "the embedded demo model" if model_name == "demo" else "the seed-scale model (random weights)"
    lines = [f"## {title}", "", f"Main load: {args.clients} closed-loop clients, {args.requests} requests "
             f"(or {args.seconds:g} s), `--max-queue {args.max_queue}`, after {args.warm_requests} untimed requests "
             "(memory growth is over the main pass; `ready` is before any request).", "", header, rule]
    lines += [_row(name, main, base[0] if base else None) for name, (main, _) in results.items()]
    lines += ["", f"Overload: {args.overload_clients} clients, {args.overload_requests} requests, against the same "
              f"servers (`--max-queue {args.max_queue}`: a server holds the batch it decodes plus {args.max_queue} "
              "waiting requests; a 503 means that was full).", "", header, rule]
    lines += [_row(name, overload, base[1] if base else None) for name, (_, overload) in results.items()]
    return "\n".join(lines)


def render(sections: list[str], args: argparse.Namespace) -> str:
    command = "python -m benchmarks.serve_load " + " ".join(sys.argv[1:])
    env = manifest(args.threads, device=args.device)
    options = "; ".join(f"{name}: `runner serve {' '.join(flags) or '(defaults)'}`" for name, flags in SERVERS.items())
    return "\n".join([
        "# `runner serve` under load", "",
        f"Generated by `{command.strip()}` over loopback. Servers ({args.threads} threads each): {options}. "
        "Latency is the client's (request sent to answer read, queue included); requests/s counts answered "
        "requests over the pass's wall time; memory is the server's resident set before the pass's first request "
        "and after its last.", "", *sections, "", *environment_block(env)])


if __name__ == "__main__":
    raise SystemExit(main())
