"""Word error rate of the ASR decoder's transcripts against the source references."""

from __future__ import annotations

import re
import unicodedata

_PUNCTUATION = re.compile(r"[^\w\s']")


def normalize(text: str) -> list[str]:
    """Lower-case, punctuation removed: the `lc.rm` convention of ESPnet's MuST-C recipe."""
    text = unicodedata.normalize("NFC", text).lower()
    return _PUNCTUATION.sub(" ", text).split()


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def corpus_wer(hypotheses: list[str], references: list[str]) -> float:
    """Total word edits over total reference words, in percent, both sides normalized."""
    errors = words = 0
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        ref = normalize(reference)
        errors += edit_distance(ref, normalize(hypothesis))
        words += len(ref)
    return 100.0 * errors / max(words, 1)


def source_wer(hypotheses: list[str | None], references: list[str | None]) -> float | None:
    """`corpus_wer`, or None when any transcript or source reference is missing (no ASR decoder, no source text)."""
    if any(h is None for h in hypotheses) or any(r is None for r in references):
        return None
    return corpus_wer(hypotheses, references)  # type: ignore[arg-type]
