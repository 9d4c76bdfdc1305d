"""Where one seed-scale translation spends its time, by PyTorch operator.

    python -m benchmarks.profile_searches --scheme dynamic-int8 --utterances 4 --threads 2

Builds (or reuses) the seed-scale model of `benchmarks.seed_scale`, applies one of its schemes,
translates one warm-up utterance, then profiles the next ones with `torch.profiler` and prints
the operators by self CPU time.
"""

from __future__ import annotations

import argparse

import torch
import yaml

from benchmarks.common import SEED_SCALE_CONFIG as CONFIG
from benchmarks.common import build_model, decode_options, scheme_runner
from benchmarks.seed_scale import SCHEMES
from runner import defaults
from runner.data import load_test_set, preload
from runner.model import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", default="fp32", choices=list(SCHEMES))
    parser.add_argument("--utterances", type=int, default=4, help="profiled utterances (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args(argv)
    config = yaml.safe_load(CONFIG.read_text())
    bundle = load(build_model(config), decode_options(config))
    test = preload(load_test_set(defaults.data_path(), "tst-COMMON"), bundle.sample_rate, limit=args.utterances + 1)
    runner = scheme_runner(bundle, SCHEMES[args.scheme], threads=args.threads)
    runner.translate(test.utterances[0].waveform, bundle.sample_rate)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for utterance in test.utterances[1:]:
            runner.translate(utterance.waveform, bundle.sample_rate)
    print(f"scheme {args.scheme}, {args.utterances} utterances, {args.threads} threads")
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
