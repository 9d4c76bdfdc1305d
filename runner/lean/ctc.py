"""CTC prefix scoring for the lean search: ESPnet's `CTCPrefixScoreTH` for one utterance, as tensors.

The forward variables of every running hypothesis live in one (T, 2, n) tensor; a step scores
the pre-beam candidates of each hypothesis at once and `select` keeps the columns of the chosen
(hypothesis, token) pairs. The recursion over frames is `forward_scan` (two log-cumulative
sums in float64) instead of ESPnet's Python loop over frames; every other quantity is computed
as ESPnet computes it.
"""

from __future__ import annotations

import torch

LOGZERO = -10000000000.0  # CTCPrefixScoreTH.logzero


def forward_scan(r: torch.Tensor, log_phi: torch.Tensor, x: torch.Tensor, start: int, end: int) -> None:
    """Fill r[start:end] (T, 2, N, S) from r[start-1], log_phi (T, N, S) and x (2, T, N, S), in place.

    Both recursions are linear in the log semiring,

        r_n[t] = logaddexp(r_n[t-1], phi[t-1]) + x[t]      (prefix ends in the label)
        r_b[t] = logaddexp(r_n[t-1], r_b[t-1]) + blank[t]  (prefix ends in a blank)

    so with X = cumsum(x) each unrolls to a `logcumsumexp` over frames. The scan runs in float64,
    so cancelling the cumulative sums costs no precision.
    """
    if end <= start:
        return
    label, blank = x[0, start:end].double(), x[1, start:end].double()
    initial_n, initial_b = r[start - 1, 0].double(), r[start - 1, 1].double()
    label_sum, blank_sum = label.cumsum(0), blank.cumsum(0)
    # r_n[start + k] = X[k] + logaddexp(r_n[start-1], logcumsumexp_j(phi[start-1+j] - X[j-1])), X[-1] = 0
    entering = log_phi[start - 1:end - 1].double() - (label_sum - label)
    r_n = label_sum + torch.logaddexp(initial_n, entering.logcumsumexp(0))
    previous_n = torch.cat((initial_n.unsqueeze(0), r_n[:-1]))
    r_b = blank_sum + torch.logaddexp(initial_b, (previous_n - (blank_sum - blank)).logcumsumexp(0))
    r[start:end, 0] = r_n.to(r.dtype)
    r[start:end, 1] = r_b.to(r.dtype)


def prefix_step(r_prev: torch.Tensor, x_: torch.Tensor, last_pos: torch.Tensor,
                output_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of `CTCPrefixScoreTH.__call__` for every (hypothesis, candidate) column.

    Args:
        r_prev: forward variables of the prefixes (T, 2, N).
        x_: label and blank log-probabilities of the candidates (2, T, N, S).
        last_pos: each prefix's last label among its candidates, -1 where it is not one (N,).
        output_length: labels after <sos> so far.

    Returns:
        r (T, 2, N, S) of the extended prefixes, r_sum (T, N) of the prefixes, and log psi (N, S).
    """
    frames, n, snum = x_.size(1), x_.size(2), x_.size(3)
    rows = torch.arange(n, device=x_.device)
    r = torch.full((frames, 2, n, snum), LOGZERO, dtype=x_.dtype, device=x_.device)
    if output_length == 0:
        r[0, 0] = x_[0, 0]
    r_sum = torch.logsumexp(r_prev, 1)
    log_phi = r_sum.unsqueeze(2).repeat(1, 1, snum)
    # Repeating the last label needs a blank in between: its phi is the blank-ending path only.
    scored = last_pos >= 0
    log_phi[:, rows[scored], last_pos[scored]] = r_prev[:, 1, rows[scored]]
    start, end = max(output_length, 1), frames
    forward_scan(r, log_phi, x_, start, end)
    log_phi_x = torch.cat((log_phi[0].unsqueeze(0), log_phi[:-1]), dim=0) + x_[0]
    psi = torch.logsumexp(torch.cat((log_phi_x[start:end], r[start - 1, 0].unsqueeze(0)), dim=0), dim=0)
    return r, r_sum, psi


class CtcPrefixState:
    """Every running hypothesis's CTC prefix state for one utterance.

    Args:
        log_probs: the CTC head's log-probabilities (T, V) for the utterance.
        eos: the end-of-sentence id (scored as the prefix's probability at the last frame).
        blank: the blank id (never a next token unless it is also eos).
    """

    def __init__(self, log_probs: torch.Tensor, eos: int, blank: int = 0) -> None:
        self.frames, self.vocab = log_probs.shape
        self.eos, self.blank = eos, blank
        # ESPnet's x: labels and the blank column broadcast to every label, (2, T, V).
        self.x = torch.stack((log_probs, log_probs[:, blank].unsqueeze(1).expand(-1, self.vocab)))
        self.r = torch.full((self.frames, 2, 1), LOGZERO, dtype=log_probs.dtype, device=log_probs.device)
        self.r[:, 1, 0] = torch.cumsum(log_probs[:, blank], 0)
        self.prefix_score: torch.Tensor | float = 0.0  # log psi of each hypothesis's prefix, (n, 1)
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def score(self, last_tokens: torch.Tensor, output_length: int, scoring_ids: torch.Tensor | None) -> torch.Tensor:
        """CTC scores (n, V) of every next token: log psi(prefix + token) - log psi(prefix).

        Args:
            last_tokens: each hypothesis's last token, (n,).
            output_length: tokens after <sos> so far.
            scoring_ids: the pre-beam candidates (n, S); other tokens get ESPnet's logzero. None: all.
        """
        n, device = last_tokens.size(0), self.x.device
        rows = torch.arange(n, device=device)
        if scoring_ids is not None:
            snum = scoring_ids.size(1)
            idmap = torch.full((n, self.vocab), -1, dtype=torch.long, device=device)
            idmap.scatter_(1, scoring_ids, torch.arange(snum, device=device).expand(n, -1))
            x_ = self.x[:, :, scoring_ids]  # (2, T, n, S)
            last_pos = idmap[rows, last_tokens]
        else:
            snum, idmap = self.vocab, None
            x_ = self.x.unsqueeze(2).expand(-1, -1, n, -1)
            last_pos = last_tokens
        r, r_sum, psi = prefix_step(self.r, x_, last_pos, output_length)
        if scoring_ids is not None:
            log_psi = torch.full((n, self.vocab), LOGZERO, dtype=self.x.dtype, device=device)
            log_psi.scatter_(1, scoring_ids, psi)
        else:
            log_psi = psi
        log_psi[:, self.eos] = r_sum[self.frames - 1]
        if self.eos != self.blank:
            log_psi[:, self.blank] = LOGZERO
        self._pending = (r, log_psi, idmap)
        return log_psi - self.prefix_score

    def select(self, hypotheses: torch.Tensor, tokens: torch.Tensor) -> None:
        """Keep the states of the chosen (hypothesis, token) pairs of the last `score` call."""
        assert self._pending is not None, "select() before score()"
        r, log_psi, idmap = self._pending
        columns = idmap[hypotheses, tokens] if idmap is not None else tokens
        # ESPnet indexes with -1 for a token outside the pre-beam: the last scored column.
        self.r = r[:, :, hypotheses, columns]
        self.prefix_score = log_psi[hypotheses, tokens].unsqueeze(1)
        self._pending = None

    def keep(self, hypotheses: torch.Tensor) -> None:
        """Drop the states of ended hypotheses: keep these rows, in this order."""
        self.r = self.r[:, :, hypotheses]
        self.prefix_score = self.prefix_score[hypotheses]
