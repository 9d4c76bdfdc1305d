"""Corpus BLEU and chrF with sacrebleu, signature attached."""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass(frozen=True)
class CorpusScore:
    """A corpus-level sacrebleu score with the signature that reproduces it."""

    score: float
    signature: str
    detail: str  # sacrebleu's formatted line (n-gram precisions, BP, lengths)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> CorpusScore:
    """Case-sensitive BLEU with sacrebleu's defaults (13a tokenization), as `sacrebleu REF < HYP` gives."""
    metric = BLEU()
    result = metric.corpus_score(hypotheses, [references])
    return CorpusScore(result.score, str(metric.get_signature()), str(result))


def corpus_chrf(hypotheses: list[str], references: list[str]) -> CorpusScore:
    metric = CHRF()
    result = metric.corpus_score(hypotheses, [references])
    return CorpusScore(result.score, str(metric.get_signature()), str(result))


def paired_bootstrap(baseline: list[str], system: list[str], references: list[str], samples: int = 1000) -> float:
    """p-value of sacrebleu's paired bootstrap test of `system` against `baseline` (seed 12345)."""
    from sacrebleu.significance import PairedTest

    test = PairedTest([("baseline", baseline), ("system", system)], {"BLEU": BLEU(references=[references])},
                      references=None, test_type="bs", n_samples=samples)
    _, scores = test()
    return float(scores["BLEU"][1].p_value)
