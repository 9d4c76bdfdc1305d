"""Decoding throughput: utterances and audio seconds decoded per second of decoding wall time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Throughput:
    """Throughput over the timed (post-warm-up) utterances.

    Attributes:
        utterances_per_second: timed utterances / `wall_seconds`.
        audio_seconds_per_second: their audio seconds / `wall_seconds` (the inverse of a batch-aware RTF).
        wall_seconds: decoding wall time of the timed utterances: the sum of each timed batch's wall
            time, counted once per batch (one at a time, the sum of the utterances' latencies).
        batches: timed batches (timed utterances, one at a time).
        batch_size: the most utterances per batch.
    """

    utterances_per_second: float
    audio_seconds_per_second: float
    wall_seconds: float
    batches: int
    batch_size: int


def throughput(batch_seconds: list[float], utterances: int, audio_seconds: float, batch_size: int) -> Throughput:
    """Throughput of `utterances` (`audio_seconds` of audio) decoded in batches that took `batch_seconds` each."""
    wall = sum(batch_seconds)
    return Throughput(utterances / wall if wall else 0.0, audio_seconds / wall if wall else 0.0, wall,
                      len(batch_seconds), batch_size)
