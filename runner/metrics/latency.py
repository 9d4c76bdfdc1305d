"""Latency statistics over the timed (post-warm-up) utterances."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class LatencyStats:
    """Seconds per utterance over the timed (post-warm-up) utterances."""

    count: int
    mean: float
    std: float
    p50: float
    p90: float
    p99: float
    total: float
    rtf: float  # total latency / total audio seconds


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_stats(seconds: list[float], audio_seconds: list[float]) -> LatencyStats:
    if not seconds:
        raise ValueError("no timed utterances: the warm-up count must be smaller than the number of utterances")
    total = sum(seconds)
    return LatencyStats(
        count=len(seconds),
        mean=total / len(seconds),
        std=statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
        p50=percentile(seconds, 50),
        p90=percentile(seconds, 90),
        p99=percentile(seconds, 99),
        total=total,
        rtf=total / sum(audio_seconds),
    )
