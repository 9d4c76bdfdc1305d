"""CTC prefix scoring with the forward recursion over frames as two log-cumulative sums.

ESPnet's `CTCPrefixScoreTH` advances the CTC forward variables one encoder frame at a time,
in a Python loop, at every output step of every beam search that uses CTC: T small tensor ops
per step, a cost that grows with the utterance's length. Both recursions are linear in
the log semiring,

    r_n[t] = logaddexp(r_n[t-1], phi[t-1]) + x[t]      (prefix ends in the label)
    r_b[t] = logaddexp(r_n[t-1], r_b[t-1]) + blank[t]  (prefix ends in a blank)

so with X = cumsum(x) each unrolls to r_n[t] = X[t] + logsumexp(r_n[s-1], phi[u] - X[u] ...),
a `logcumsumexp` over frames; r_b follows from r_n the same way. The scan runs in float64, so
cancelling the cumulative sums costs no precision. Everything around the recursion (the
state layout, pre-beam scoring ids, end-of-sentence and blank scores) is computed as ESPnet
computes it, its per-hypothesis Python loops written as indexing. Attention-windowed scoring
(margin > 0, not used by batch beam search) falls back to ESPnet's loop.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
from espnet.nets.ctc_prefix_score import CTCPrefixScoreTH

from runner.compat import check_espnet_version, require_attributes, require_parameters
from runner.lean.ctc import prefix_step
from runner.model import ModelBundle
from runner.plugin import Effects, Plugin

# What `ScanCTCPrefixScore._scan` reads of a CTCPrefixScoreTH instance.
SCORER_ATTRIBUTES = ("batch", "device", "dtype", "input_length", "logzero", "x", "blank", "eos", "odim", "idx_bo",
                     "end_frames", "margin")


def check_internals(plugin: str) -> None:
    """Refuse, naming what differs, unless ESPnet's CTC prefix scorer is built as `_scan` expects."""
    from espnet.nets.scorers.ctc import CTCPrefixScorer

    require_parameters(plugin, CTCPrefixScoreTH.__init__, ("x", "xlens", "blank", "eos", "margin"),
                       "CTCPrefixScoreTH.__init__")
    require_parameters(plugin, CTCPrefixScoreTH.__call__, ("y", "state", "scoring_ids", "att_w"),
                       "CTCPrefixScoreTH.__call__")
    require_parameters(plugin, CTCPrefixScorer.batch_init_state, ("x",), "CTCPrefixScorer.batch_init_state")
    # A one-frame scorer shows which attributes this ESPnet's constructor sets.
    probe = CTCPrefixScoreTH(torch.zeros(1, 1, 3).log_softmax(-1), torch.tensor([1]), 0, 2)
    require_attributes(plugin, probe, SCORER_ATTRIBUTES, "CTCPrefixScoreTH")


@dataclass
class CtcPrefixScanConfig:
    pass


class ScanCTCPrefixScore(CTCPrefixScoreTH):
    """`CTCPrefixScoreTH` whose `__call__` runs the frame recursion as `forward_scan`."""

    def __call__(self, y: list[torch.Tensor], state: Any, scoring_ids: torch.Tensor | None = None,
                 att_w: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        if att_w is not None and self.margin > 0:
            return super().__call__(y, state, scoring_ids, att_w)
        return self._scan(y, state, scoring_ids)

    def _scan(self, y: list[torch.Tensor], state: Any, scoring_ids: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        output_length = len(y[0]) - 1  # without <sos>
        n_bh = len(y)
        n_hyps = n_bh // self.batch
        rows = torch.arange(n_bh, device=self.device)
        last_ids = torch.as_tensor([int(yi[-1]) for yi in y], device=self.device)
        self.scoring_num = scoring_ids.size(-1) if scoring_ids is not None else 0
        if state is None:
            r_prev = torch.full((self.input_length, 2, self.batch, n_hyps), self.logzero, dtype=self.dtype,
                                device=self.device)
            r_prev[:, 1] = torch.cumsum(self.x[0, :, :, self.blank], 0).unsqueeze(2)
            r_prev, s_prev = r_prev.view(-1, 2, n_bh), 0.0
        else:
            r_prev, s_prev = state[0], state[1]

        if scoring_ids is not None:
            snum = self.scoring_num
            scoring_idmap = torch.full((n_bh, self.odim), -1, dtype=torch.long, device=self.device)
            scoring_idmap.scatter_(1, scoring_ids, torch.arange(snum, device=self.device).expand(n_bh, -1))
            flat_ids = (scoring_ids + self.idx_bo.repeat(1, n_hyps).view(-1, 1)).view(-1)
            x_ = torch.index_select(self.x.view(2, -1, self.batch * self.odim), 2, flat_ids).view(2, -1, n_bh, snum)
            last_pos = scoring_idmap[rows, last_ids]
        else:
            snum, scoring_idmap = self.odim, None
            x_ = self.x.unsqueeze(3).repeat(1, 1, 1, n_hyps, 1).view(2, -1, n_bh, snum)
            last_pos = last_ids

        r, r_sum, log_psi_ = prefix_step(r_prev, x_, last_pos, output_length)
        if scoring_ids is not None:
            log_psi = torch.full((n_bh, self.odim), self.logzero, dtype=self.dtype, device=self.device)
            log_psi.scatter_(1, scoring_ids, log_psi_)
        else:
            log_psi = log_psi_
        log_psi[:, self.eos] = r_sum[self.end_frames.repeat_interleave(n_hyps), rows]
        if self.eos != self.blank:
            log_psi[:, self.blank] = self.logzero
        return (log_psi - s_prev), (r, log_psi, 0, 0, scoring_idmap)


def scan_batch_init_state(self: Any, x: torch.Tensor) -> None:
    """`CTCPrefixScorer.batch_init_state` (one utterance) building the scanning scorer."""
    logp = self.ctc.log_softmax(x.unsqueeze(0))
    self.impl = ScanCTCPrefixScore(logp, torch.tensor([logp.size(1)]), 0, self.eos)


class CtcPrefixScan(Plugin):
    name = "ctc-prefix-scan"
    description = "CTC prefix scoring in beam search without ESPnet's Python loop over encoder frames"
    Config = CtcPrefixScanConfig
    effects = Effects(search=True)

    def apply(self, bundle: ModelBundle) -> None:
        from espnet.nets.scorers.ctc import CTCPrefixScorer

        check_espnet_version(self.name)
        check_internals(self.name)
        patched = 0
        for search in bundle.searches:
            for scorer in search.scorers.values():
                if isinstance(scorer, CTCPrefixScorer):
                    require_attributes(self.name, scorer, ("ctc", "eos", "impl"), "CTCPrefixScorer")
                    scorer.batch_init_state = types.MethodType(scan_batch_init_state, scorer)
                    patched += 1
        self.details.update(ctc_scorers=patched)
