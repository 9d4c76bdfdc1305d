"""LocalAgreement-n: commit the longest prefix the last n hypotheses of one segment share."""

from __future__ import annotations


class LocalAgreement:
    """The commit policy of one segment, over words.

    Each `update` takes the segment's latest hypothesis (its words); once `n` hypotheses have been seen,
    the words their common prefix has beyond what is committed are committed and returned. Committed words
    are never taken back: a later hypothesis that disagrees with them changes only what follows.

    Args:
        n: how many consecutive hypotheses must agree (1: commit every hypothesis as it comes).
    """

    def __init__(self, n: int = 2) -> None:
        if n < 1:
            raise ValueError(f"agreement must be 1 or more, got {n}")
        self.n = n
        self.committed: list[str] = []
        self._recent: list[list[str]] = []

    def update(self, words: list[str]) -> list[str]:
        """Take the latest hypothesis; return the words it newly commits (often none)."""
        self._recent = [*self._recent, list(words)][-self.n:]
        if len(self._recent) < self.n:
            return []
        agreed = _common_prefix(self._recent)
        return self._commit(agreed)

    def unstable(self) -> list[str]:
        """The latest hypothesis's words beyond the committed ones (what a display shows apart)."""
        latest = self._recent[-1] if self._recent else []
        return latest[len(self.committed):] if latest[:len(self.committed)] == self.committed else latest

    def finish(self, words: list[str]) -> list[str]:
        """The segment's last hypothesis: its words beyond as many as are committed are committed (where it
        disagrees with the committed ones, they stand and its own are taken from there on)."""
        self._recent = [list(words)]
        extension = list(words[len(self.committed):])
        self.committed += extension
        return extension

    def _commit(self, agreed: list[str]) -> list[str]:
        """Commit what `agreed` adds to the committed words; nothing when it does not start with them."""
        done = len(self.committed)
        extension = agreed[done:] if agreed[:done] == self.committed else []
        self.committed += extension
        return extension


def _common_prefix(hypotheses: list[list[str]]) -> list[str]:
    prefix: list[str] = []
    for words in zip(*hypotheses):
        if any(word != words[0] for word in words[1:]):
            break
        prefix.append(words[0])
    return prefix
