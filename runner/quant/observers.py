"""Activation observers for static int8 beyond torch.ao's: percentile and entropy (KL) ranges.

Both record the same running histogram as torch.ao's `HistogramObserver` and differ only in how
they choose the clipping range from it:

- `PercentileObserver` keeps the central `percentile` % of the observed values (the range from
  the (100 - p) % quantile to the p % quantile), clipping rare extremes;
- `EntropyObserver` chooses the symmetric threshold T whose int8 rendering of the |x| histogram
  has the least Kullback-Leibler divergence from the clipped original (TensorRT's calibration:
  values above T are counted in the last bin, the kept bins are merged into as many levels as
  one side of the quantized range holds and spread back).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.ao.quantization import HistogramObserver


class PercentileObserver(HistogramObserver):
    """A histogram observer whose range is the central `percentile` % of what it saw.

    Args:
        percentile: the share of values kept inside the range, in percent (e.g. 99.99).
        kwargs: `HistogramObserver`'s (dtype, qscheme, reduce_range, bins, ...).
    """

    def __init__(self, percentile: float = 99.99, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be within 50..100, got {percentile}")
        self.percentile = percentile

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.histogram.double()
        total = float(counts.sum())
        if total == 0:
            return self.min_val, self.max_val
        cumulative = torch.cumsum(counts, dim=0) / total
        tail = (100.0 - self.percentile) / 100.0
        start = int(torch.searchsorted(cumulative, torch.tensor(tail, dtype=torch.float64)))
        end = int(torch.searchsorted(cumulative, torch.tensor(1.0 - tail, dtype=torch.float64)))
        width = (self.max_val - self.min_val) / self.bins
        return self.min_val + width * start, self.min_val + width * min(self.bins, end + 1)


class EntropyObserver(HistogramObserver):
    """A histogram observer whose range [-T, T] (within what it saw) minimises the KL divergence of int8."""

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.histogram.double().cpu().numpy()
        low, high = float(self.min_val), float(self.max_val)
        if counts.sum() == 0 or high <= low:
            return self.min_val, self.max_val
        amax = max(abs(low), abs(high))
        centres = low + (np.arange(self.bins) + 0.5) * (high - low) / self.bins
        folded = np.bincount(np.minimum((np.abs(centres) / amax * self.bins).astype(np.int64), self.bins - 1),
                             weights=counts, minlength=self.bins)
        levels = max(2, (int(self.quant_max) - int(self.quant_min) + 1) // 2)
        threshold = amax * kl_threshold_bin(folded, levels) / self.bins
        return (torch.tensor(max(low, -threshold), dtype=self.min_val.dtype),
                torch.tensor(min(high, threshold), dtype=self.max_val.dtype))


def kl_threshold_bin(histogram: np.ndarray, levels: int, stride: int = 4) -> int:
    """The number of |x| histogram bins to keep whose `levels`-level rendering diverges least (KL).

    Args:
        histogram: counts of |x| in equal bins from 0 up.
        levels: quantization levels on one side of zero (128 for 8 bits).
        stride: candidate bin counts are tried every `stride` bins from `levels` up.

    Returns:
        The best bin count (the threshold is that many bins' width).
    """
    bins = len(histogram)
    if bins <= levels:
        return bins
    best, best_divergence = bins, np.inf
    for keep in range(levels, bins + 1, stride):
        reference = histogram[:keep].copy()
        reference[-1] += histogram[keep:].sum()  # values above the threshold clip into its last bin
        kept = histogram[:keep]
        sizes = np.full(levels, keep // levels)
        sizes[:keep % levels] += 1  # as np.array_split divides the kept bins into levels
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        used = kept > 0
        spread = np.add.reduceat(kept, starts) / np.maximum(np.add.reduceat(used.astype(np.float64), starts), 1)
        rendered = np.repeat(spread, sizes) * used  # each level's count spread over its non-empty bins
        divergence = _kl(reference, rendered)
        if divergence < best_divergence:
            best, best_divergence = keep, divergence
    return best


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    total = q.sum()
    if total == 0:
        return np.inf
    q = q / total
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
