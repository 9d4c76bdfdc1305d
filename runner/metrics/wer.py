"""Word error rate of the ASR decoder's transcripts against the source references (`editdistance`, which ESPnet
also uses, counts the word edits)."""

from __future__ import annotations

import re
import unicodedata

import editdistance

_PUNCTUATION = re.compile(r"[^\w\s']")


def normalize(text: str) -> list[str]:
    """Lower-case, punctuation removed: the `lc.rm` convention of ESPnet's MuST-C recipe."""
    text = unicodedata.normalize("NFC", text).lower()
    return _PUNCTUATION.sub(" ", text).split()


def corpus_wer(hypotheses: list[str], references: list[str]) -> float:
    """Total word edits over total reference words, in percent, both sides normalized."""
    errors = words = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        ref = normalize(reference)
        errors += editdistance.eval(ref, normalize(hypothesis))  # word-level Levenshtein distance
        words += len(ref)
    return 100.0 * errors / max(words, 1)


def source_wer(hypotheses: list[str | None], references: list[str | None]) -> float | None:
    """`corpus_wer`, or None when any transcript or source reference is missing (no ASR decoder, no source text)."""
    if any(h is None for h in hypotheses) or any(r is None for r in references):
        return None
    return corpus_wer(hypotheses, references)  # type: ignore[arg-type]
