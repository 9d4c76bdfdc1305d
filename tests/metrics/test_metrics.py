from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runner.metrics.bleu import corpus_bleu, corpus_chrf
from runner.metrics.latency import latency_stats, percentile
from runner.metrics.wer import corpus_wer

HYPOTHESES = ["Der Hund sieht ein Auto.", "Eine Katze hat den Schlüssel.", "heute kauft der Mann Brot", ""]
REFERENCES = ["Der Hund sieht ein Auto.", "Eine Katze hat den Schlüssel gefunden.", "Heute kauft der Mann Brot.",
              "Das Mädchen kann die Tür öffnen."]


def _sacrebleu_cli(tmp_path: Path, metric: str) -> float:
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("\n".join(HYPOTHESES) + "\n", encoding="utf-8")
    ref.write_text("\n".join(REFERENCES) + "\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", metric, "-b", "-w", "6"],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_bleu_equals_the_sacrebleu_command(tmp_path: Path) -> None:
    score = corpus_bleu(HYPOTHESES, REFERENCES)
    assert round(score.score, 6) == _sacrebleu_cli(tmp_path, "bleu")
    assert "case:mixed" in score.signature and "tok:13a" in score.signature
    assert 0 < score.score < 100


def test_chrf_equals_the_sacrebleu_command(tmp_path: Path) -> None:
    assert round(corpus_chrf(HYPOTHESES, REFERENCES).score, 6) == _sacrebleu_cli(tmp_path, "chrf")


def test_bleu_is_case_sensitive() -> None:
    assert corpus_bleu(["der hund sieht ein auto ."], ["Der Hund sieht ein Auto ."]).score < 100
    assert corpus_bleu(["Der Hund sieht ein Auto ."], ["Der Hund sieht ein Auto ."]).score == pytest.approx(100)


def test_wer_counts_edits_over_reference_words() -> None:
    assert corpus_wer(["a x c"], ["a b c d"]) == pytest.approx(100 * 2 / 4)  # a substitution and a deletion
    # Case and punctuation are normalized away (lc.rm): one deletion over 4 + 4 words.
    assert corpus_wer(["The dog sees.", "a cat has the key"], ["the dog sees a", "A cat has the key"]) == pytest.approx(
        100 * 1 / 9)


def test_latency_statistics_match_numpy() -> None:
    values = list(np.random.default_rng(0).uniform(0.1, 2.0, size=37))
    audio = [2.0] * 37
    stats = latency_stats(values, audio)
    assert stats.count == 37
    assert stats.mean == pytest.approx(np.mean(values))
    assert stats.std == pytest.approx(np.std(values, ddof=1))
    for q, got in ((50, stats.p50), (90, stats.p90), (99, stats.p99)):
        assert got == pytest.approx(np.percentile(values, q))
    assert stats.rtf == pytest.approx(sum(values) / 74.0)
    assert percentile([3.0], 90) == 3.0
    with pytest.raises(ValueError, match="warm-up"):
        latency_stats([], [])


def _demo_references() -> list[str]:
    from runner import defaults
    from runner.data import load_test_set

    return [s.reference for s in load_test_set(defaults.data_path(), "tst-COMMON").segments]


def test_the_paired_difference_knows_its_sample() -> None:
    """On the demo's 100 references: no change is exactly nothing; one sentence lost is about half a point and
    within the keeps-BLEU margin; every sentence broken lies far outside it; the same call gives the same
    interval (sacrebleu's seed)."""
    from runner.metrics.paired import paired_difference

    references = _demo_references()
    same = paired_difference(references, references, references)
    assert (same.delta, same.low, same.high, same.changed, same.chrf_delta) == (0.0, 0.0, 0.0, 0, 0.0)
    one_lost = list(references)
    one_lost[7] = " ".join(references[7].split()[:2])
    lost = paired_difference(references, one_lost, references)
    expected = corpus_bleu(one_lost, references).score - 100.0
    assert lost.delta == pytest.approx(expected) and lost.changed == 1 and lost.low <= lost.delta <= lost.high
    assert lost.holds(1.0) and lost == paired_difference(references, one_lost, references)
    broken = paired_difference(references, [r.split()[0] for r in references], references)
    assert broken.high < -20 and not broken.holds(1.0) and broken.changed == 100 and broken.chrf_delta < -20
    with pytest.raises(ValueError, match="as many baseline, system and reference sentences, got 100, 99, 100"):
        paired_difference(references, references[:99], references)
