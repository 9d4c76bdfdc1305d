"""Does `torch.compile` of the decoder layer step pay off on this CPU?

    python -m benchmarks.compile_decoder_step --scheme fast-search

Builds (or reuses) the seed-scale model, applies a `benchmarks.seed_scale` scheme that includes
`self-kv-cache`, and times the same utterances with its per-layer step run eagerly and compiled
by Inductor (dynamic shapes: the stored prefix grows every step). Prints the compile-bearing
first utterances apart from the steady-state repeats.
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

import runner.plugins.self_kv_cache as self_kv_cache
from benchmarks.common import SEED_SCALE_CONFIG as CONFIG
from benchmarks.common import build_model, decode_options, scheme_runner
from benchmarks.seed_scale import SCHEMES
from runner import defaults
from runner.data import load_test_set, preload
from runner.model import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", default="fast-search", choices=[s for s in SCHEMES if "fast" in s])
    parser.add_argument("--utterances", type=int, default=4, help="timed utterances (after two untimed)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    config = yaml.safe_load(CONFIG.read_text())
    eager_step = self_kv_cache.layer_step
    # Every decoder layer is its own module: one compiled variant per layer and prefix shape.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 512
    test = None
    for label in ("eager", "compiled"):
        bundle = load(build_model(config), decode_options(config))
        test = test or preload(load_test_set(defaults.data_path(), "tst-COMMON"), bundle.sample_rate,
                               limit=args.utterances + 2)
        self_kv_cache.layer_step = eager_step if label == "eager" else torch.compile(eager_step, dynamic=True)
        runner = scheme_runner(bundle, SCHEMES[args.scheme], threads=args.threads)
        firsts = []
        for utterance in test.utterances[:2]:
            started = time.perf_counter()
            runner.translate(utterance.waveform, bundle.sample_rate)
            firsts.append(time.perf_counter() - started)
        repeats = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            for utterance in test.utterances[2:]:
                runner.translate(utterance.waveform, bundle.sample_rate)
            repeats.append(time.perf_counter() - started)
        print(f"{label}: first two utterances {firsts[0]:.1f} s, {firsts[1]:.1f} s; then {args.utterances} utterances "
              f"in {', '.join(f'{r:.2f} s' for r in repeats)} ({args.scheme}, {args.threads} threads)", flush=True)
    self_kv_cache.layer_step = eager_step
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
