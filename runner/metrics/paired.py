"""Paired comparison of two systems on the same sentences: BLEU difference with a bootstrap interval.

A corpus BLEU on 100 sentences moves by about 0.5 when one sentence changes its translation, so "system
B keeps A's BLEU" is a claim about a sample: `paired_difference` resamples the sentences (sacrebleu's
sufficient statistics, the same resamples for both systems, as sacrebleu's paired bootstrap test does)
and returns the difference with its 95 % interval, the sentences that changed and the chrF difference.
`PairedDifference.holds(margin)` is the non-inferiority reading: B keeps A's BLEU within `margin` unless
the whole interval lies below `-margin`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

SAMPLES = 1000
SEED = 12345  # sacrebleu's default (SACREBLEU_SEED): the same resamples on every machine


@dataclass(frozen=True)
class PairedDifference:
    """`system` minus `baseline` on the same sentences, with the sample's uncertainty."""

    delta: float  # corpus BLEU difference (system - baseline)
    low: float  # 2.5th percentile of the bootstrap differences
    high: float  # 97.5th percentile
    changed: int  # sentences whose translation differs
    sentences: int
    chrf_delta: float
    samples: int
    seed: int

    def holds(self, margin: float) -> bool:
        """Whether the sample is consistent with losing at most `margin` BLEU (the interval reaches -margin)."""
        return self.high >= -margin

    def line(self) -> str:
        """One line: difference, interval, sentences changed, chrF difference, and how it was resampled."""
        return (f"ΔBLEU {self.delta:+.2f} (95 % paired bootstrap [{self.low:+.2f}, {self.high:+.2f}], "
                f"{self.samples} resamples, seed {self.seed}), {self.changed} of {self.sentences} sentences "
                f"changed, ΔchrF {self.chrf_delta:+.2f}")


def paired_difference(baseline: list[str], system: list[str], references: list[str],
                      samples: int = SAMPLES) -> PairedDifference:
    """`system` against `baseline` on the same `references` (one reference per sentence), BLEU as sacrebleu's
    defaults compute it; the resampling seed is sacrebleu's (`SACREBLEU_SEED`, default 12345)."""
    if not len(baseline) == len(system) == len(references) or not references:
        raise ValueError(f"paired comparison needs as many baseline, system and reference sentences, got "
                         f"{len(baseline)}, {len(system)}, {len(references)}")
    seed = int(os.environ.get("SACREBLEU_SEED", SEED))
    metric = BLEU()
    # sacrebleu's PairedTest gives a p-value and each system's own interval, not the difference's; these are the
    # hooks it resamples with (per-sentence sufficient statistics, a score from their sum)
    stats = [np.array(metric._extract_corpus_statistics(hyps, [references]), dtype="float64")
             for hyps in (baseline, system)]
    indices = np.random.default_rng(seed).choice(len(references), size=(samples, len(references)), replace=True)
    diffs = np.array([metric._compute_score_from_stats(list(stats[1][rows].sum(0))).score
                      - metric._compute_score_from_stats(list(stats[0][rows].sum(0))).score for rows in indices])
    delta = (metric.corpus_score(system, [references]).score - metric.corpus_score(baseline, [references]).score)
    chrf = CHRF()
    chrf_delta = chrf.corpus_score(system, [references]).score - chrf.corpus_score(baseline, [references]).score
    low, high = np.percentile(diffs, [2.5, 97.5])
    return PairedDifference(delta, float(low), float(high), sum(a != b for a, b in zip(baseline, system)),
                            len(references), chrf_delta, samples, seed)
