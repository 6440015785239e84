"""Screening on the path: each row follows the correlations of only the coordinates that can join soon.

A step needs the correlations ``q_j`` only for coordinates that can join soon. Each row tracks its
support, its blocked columns and the ``settings.screen`` inactive coordinates nearest to joining;
for the others the slack ``lam - |q_j|`` of the last refresh is kept and bounded from below with
``|dq_j / dlam| = |M_j^T M_S u| <= sqrt(G_jj) sqrt(s_S^T u)`` (Cauchy-Schwarz; ``G_SS u = s_S``).
A step never goes further than where an untracked coordinate could reach ``+-lam``; when that limit
binds, the row stops there (a point of the path like any other) and is refreshed: its correlations
are recomputed exactly for all coordinates (one GEMM) and the tracked set is chosen again. The path
stays exact; only the work per step shrinks from ``d`` to the tracked columns.
"""

from __future__ import annotations

import torch

from consparse.lasso.support import PathBatch, scatter

# Largest rows x support x d gather of Gram rows (elements) done instead of a GEMM over the union.
_GATHER_LIMIT = 2**25


class Screening:
    """The tracked correlations of ``consparse.lasso.path.LassoPath`` (a mixin of it)."""

    # Largest drift of q_S from lam s_S (relative to lam) accepted before an inverse is recomputed.
    drift_tolerance = 1e-10

    def _current(self, batch: PathBatch) -> torch.Tensor:
        offset, direction = self._support_solve(batch)
        return offset - batch.lam[:, None] * direction

    def _correlations(self, batch: PathBatch) -> torch.Tensor:
        """``q = c - (G + delta I) w`` at the batch's current solutions, for all d coordinates."""
        return self.problem.correlations[batch.rows] - self._gram_times(batch.index, self._valid(batch), self._current(batch))

    def _screened(self, batch: PathBatch) -> bool:
        return batch.slack.shape[1] > 0

    def _refresh_tracking(self, batch: PathBatch, rows: torch.Tensor) -> None:
        """Exact correlations of ``rows`` for every coordinate; choose again what they track."""
        d = self.problem.features
        # Blocked columns are tracked like the support: they sit at +-lam, with no slack to bound.
        followed = batch.size[rows] + batch.blocked[rows].sum(dim=1)
        width = int(followed.max()) + self.settings.screen if rows.numel() else 0
        if self.settings.screen == 0 or 2 * width > d:
            # Tracking everything: no bound needed (every row of the batch switches at once).
            if self._screened(batch) or batch.tracked.shape[1] != d:
                rows = torch.arange(batch.rows.numel(), device=self.device)
                batch.tracked = torch.arange(d, device=self.device).expand(rows.numel(), -1).clone()
                batch.q = batch.lam.new_zeros(rows.numel(), d)
                batch.slack = batch.lam.new_zeros(rows.numel(), 0)
            batch.q[rows] = self._correlations(batch.take(rows))
            return
        sub = batch.take(rows)
        q = self._correlations(sub)
        if not self._screened(batch) or batch.tracked.shape[1] < width:
            # (Re)allocate the tracked arrays for the whole batch at the new width.
            count = batch.rows.numel()
            width = max(width, batch.tracked.shape[1] if self._screened(batch) else 0)
            old_rows = torch.ones(count, dtype=torch.bool, device=self.device)
            old_rows[rows] = False
            tracked = torch.zeros(count, width, dtype=torch.long, device=self.device)
            values = batch.lam.new_zeros(count, width)
            if self._screened(batch) and bool(old_rows.any()):
                # Rows not refreshed now keep what they track (padded with repeats of their first column).
                keep = old_rows.nonzero().flatten()
                pad = width - batch.tracked.shape[1]
                tracked[keep] = torch.cat([batch.tracked[keep], batch.tracked[keep, :1].expand(-1, pad)], dim=1)
                values[keep] = torch.cat([batch.q[keep], batch.q[keep, :1].expand(-1, pad)], dim=1)
            batch.tracked, batch.q = tracked, values
            if not self._screened(batch):
                batch.slack = batch.lam.new_full((count, d), float("inf"))
        width = batch.tracked.shape[1]
        valid = self._valid(sub)
        member = torch.zeros(rows.numel(), d, dtype=torch.int32, device=self.device).scatter_add(1, sub.index, valid.to(torch.int32)) > 0
        member |= sub.blocked
        slack = (sub.lam[:, None] - q.abs()).clamp_min(0)
        gamma = self._gamma(sub)
        # Nearest to joining first: the distance an untracked coordinate could need, per unit of bound.
        score = torch.where(member, -1.0, slack / (1.0 + self.column_norms[None, :] * gamma[:, None]))
        score = torch.where(self.dead[None, :] & ~member, float("inf"), score)
        chosen = score.topk(width, dim=1, largest=False).indices
        untracked = torch.ones(rows.numel(), d, dtype=torch.bool, device=self.device).scatter(1, chosen, False)
        batch.tracked[rows] = chosen
        batch.q[rows] = q.gather(1, chosen)
        batch.slack[rows] = torch.where(untracked & ~self.dead[None, :], slack, float("inf"))
        batch.moved[rows] = 0
        batch.spent[rows] = 0

    def _gamma(self, batch: PathBatch) -> torch.Tensor:
        """``sqrt(s_S^T u)`` per row: bounds ``|dq_j/dlam| <= sqrt(G_jj) gamma`` off the support."""
        _, direction = self._support_solve(batch)
        return (batch.signs * direction).sum(dim=1).clamp_min(0).sqrt()

    def _tracked_gram_times(self, batch: PathBatch, values: torch.Tensor) -> torch.Tensor:
        """``(G + delta I)[T, S] v`` on each row's tracked coordinates T (rows x C)."""
        valid = self._valid(batch)
        masked = torch.where(valid, values, 0.0)
        if not self._screened(batch):
            return self._gram_times(batch.index, valid, values)
        out = torch.bmm(self.problem.gram[batch.tracked[:, :, None], batch.index[:, None, :]], masked[:, :, None])[:, :, 0]
        if self.delta:
            on_support = batch.tracked[:, :, None] == batch.index[:, None, :]
            out = out + self.delta * (on_support & valid[:, None, :]).to(self.dtype).bmm(masked[:, :, None])[:, :, 0]
        return out

    def _gram_times(self, index: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``(G + delta I)[:, S] v`` for support-shaped ``values`` (rows x K) -> rows x d.

        Only the Gram rows of the union of the supports are read (rows share many coordinates):
        one GEMM of ``rows x |union|`` by ``|union| x d`` for the whole batch, or, for small
        supports, a product with each row's own Gram rows.
        """
        d = self.problem.features
        masked = torch.where(valid, values, 0.0)
        union = torch.unique(index[valid])
        rows, width = index.shape
        if union.numel() == 0:
            out = values.new_zeros(rows, d)
        elif 4 * width < union.numel() and rows * width * d <= _GATHER_LIMIT:
            out = torch.bmm(masked[:, None, :], self.problem.gram[index])[:, 0]
        elif union.numel() * 2 >= d:
            out = scatter(index, valid, values, d) @ self.problem.gram
        else:
            position = torch.searchsorted(union, index.contiguous()).clamp_max(union.numel() - 1)
            compact = values.new_zeros(values.shape[0], union.numel()).scatter_add(1, position, masked)
            out = compact @ self.problem.gram.index_select(0, union)
        if self.delta:
            out = out.scatter_add(1, index, self.delta * masked)
        return out

    def _resync(self, batch: PathBatch) -> None:
        """Exact tracked correlations; rows whose support conditions drifted get a fresh inverse."""
        if batch.rows.numel() == 0:
            return
        tracked_c = self.problem.correlations[batch.rows].gather(1, batch.tracked)
        batch.q = tracked_c - self._tracked_gram_times(batch, self._current(batch))
        valid = self._valid(batch)
        counts = torch.zeros(batch.rows.numel(), self.problem.features, dtype=self.dtype, device=self.device)
        # q on the support, read back through the tracked coordinates (the support is among them).
        counts.scatter_(1, batch.tracked, batch.q)
        on_support = counts.gather(1, batch.index)
        drift = torch.where(valid, (on_support - batch.lam[:, None] * batch.signs).abs(), 0.0)
        scale = batch.lam.clamp_min(torch.finfo(self.dtype).tiny)
        worst = drift.amax(dim=1) if drift.shape[1] else scale * 0
        drifted = (worst > self.drift_tolerance * scale).nonzero().flatten()
        if drifted.numel():
            self._refresh(batch, drifted)
            sub = batch.take(drifted)
            batch.q[drifted] = self.problem.correlations[sub.rows].gather(1, sub.tracked) - self._tracked_gram_times(sub, self._current(sub))
