"""Exact penalised LASSO solutions for many rows that share one Gram matrix, on the CPU or a GPU.

Each row r has the problem ``min_w 1/2 ||M w - z_r||^2 + lam_r ||w||_1`` on the same design ``M``
(m x d). Only sufficient statistics enter: the Gram matrix ``G = M^T M`` (d x d, shared), the
correlations ``c_r = M^T z_r`` and ``||z_r||^2``, so the cost does not grow with the samples.

Why a solver of our own: scikit-learn fits one penalty per call (a multi-output fit shares one
alpha; ``lasso_path`` with several targets solves the multi-task problem), so a bisection with a
penalty per row runs row by row in Python; celer and skglm are per row as well. Batched FISTA
identifies supports too slowly on these ill-conditioned Gram matrices (docs/reference
implicit-models.md, section 8), and a vectorised coordinate descent is bound by its Python loop
over coordinates. Instead, ``LassoPath`` follows every row's solution path ``w(lam)`` exactly, all
rows at once (homotopy / LARS-lasso, Osborne, Presnell & Turlach 2000; Efron et al. 2004):

* on a piece of the path the support ``S`` and its signs ``s`` are fixed and
  ``w_S(lam) = p - lam u`` with ``p = G_SS^{-1} c_S``, ``u = G_SS^{-1} s_S``; the correlations
  ``q = c - G w`` are affine in ``lam`` as well, so the next knot (a coefficient reaching zero, an
  inactive correlation reaching ``+-lam``, the target penalty, or a radius on ``||w_K||_1``) is
  found in closed form for every row;
* one step moves every row to its next knot: a batched product with each row's inverse of
  ``G_SS`` (a rank-one update when a coordinate joins or leaves, so every step costs ``O(K^2)`` per
  row for a support of K; the inverse is recomputed from ``G_SS`` whenever the optimality conditions
  on the support drift, see ``LassoPath.check_every``) and one GEMM with the Gram rows of the union of
  the supports;
* a move can start anywhere on the path in either direction (a bisection goes down and back up),
  so a solve from a neighbouring penalty only pays for the knots in between: warm starts are exact.

The solutions are exact up to rounding: zeros off the support are exact zeros and the optimality
conditions hold to ~1e-12, with no tolerance to tune. A tiny ridge ``delta`` (relative to the mean
diagonal of ``G``) keeps ``G_SS + delta I`` positive definite on rank-deficient designs (more
features than samples, duplicated or dead states); the path solved is that of
``1/2 w^T (G + delta I) w - c^T w + lam ||w||_1``.

Moves and solves run in the statistics' own dtype with autocast off (``consparse.precision``):
inside ``torch.autocast`` the knots' closed forms would otherwise come from bfloat16 products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.precision import full_precision
from consparse.validation import check_int, check_range

# Relative size (of lam) under which a knot counts as "here": it is handled without moving.
_IMMEDIATE = 1e-12
# Largest rows x support x d gather of Gram rows (elements) done instead of a GEMM over the union.
_GATHER_LIMIT = 2**25
# Relative slack (of lam) before an inactive correlation counts as violating the optimality conditions.
VIOLATION = 1e-9


@dataclass(frozen=True)
class PathSettings:
    """Numerical settings of ``LassoPath``.

    Attributes:
        ridge: ``delta`` relative to the mean diagonal of the Gram matrix (0: none; rank-deficient
            designs need some).
        max_knots: knots a row may traverse in one ``move`` before it is stopped (and reported).
        screen: inactive coordinates each row tracks beside its support (0: all of them); see
            ``LassoPath``. Screening is used only where it leaves at most half the coordinates.
    """

    ridge: float = 1e-10
    max_knots: int = 20_000
    screen: int = 256

    def validate(self, prefix: str) -> None:
        check_range(f"{prefix}ridge", self.ridge, 0.0, 1e-2)
        check_int(f"{prefix}max_knots", self.max_knots, 1)
        check_int(f"{prefix}screen", self.screen, 0)


@dataclass
class LassoProblem:
    """Sufficient statistics of many least-squares targets on one design.

    Attributes:
        gram: ``M^T M`` (d x d).
        correlations: ``M^T z_r`` for each row r (rows x d).
        target_sq_norms: ``||z_r||^2`` (rows,).
    """

    gram: torch.Tensor
    correlations: torch.Tensor
    target_sq_norms: torch.Tensor

    def __post_init__(self) -> None:
        d = self.gram.shape[0]
        if self.gram.shape != (d, d) or self.correlations.dim() != 2 or self.correlations.shape[1] != d:
            raise ValueError(
                f"gram {tuple(self.gram.shape)} and correlations {tuple(self.correlations.shape)} do not match"
            )
        if self.target_sq_norms.shape != (self.correlations.shape[0],):
            raise ValueError("target_sq_norms needs one value per row of correlations")

    @property
    def rows(self) -> int:
        return self.correlations.shape[0]

    @property
    def features(self) -> int:
        return self.gram.shape[0]

    def select(self, index: torch.Tensor | slice) -> LassoProblem:
        """The same design with a subset of the rows."""
        return LassoProblem(self.gram, self.correlations[index], self.target_sq_norms[index])

    def lambda_max(self) -> torch.Tensor:
        """Per row, the smallest penalty whose solution is zero: ``||c_r||_inf``."""
        return self.correlations.abs().amax(dim=1) if self.features else self.target_sq_norms.new_zeros(self.rows)

    def gradient(self, weights: torch.Tensor) -> torch.Tensor:
        """``q = c - G w = M^T (z - M w)`` for every row."""
        return self.correlations - weights @ self.gram

    def loss(self, weights: torch.Tensor) -> torch.Tensor:
        """``1/2 ||M w - z||^2`` per row (from the statistics)."""
        fit = (weights @ self.gram * weights).sum(dim=1)
        return (0.5 * self.target_sq_norms - (self.correlations * weights).sum(dim=1) + 0.5 * fit).clamp_min(0)


def ridge_delta(gram: torch.Tensor, ridge: float) -> float:
    """The ridge ``delta`` added to ``G``: ``ridge`` times the mean positive diagonal (0 without one)."""
    diagonal = gram.diagonal()
    positive = diagonal[diagonal > 0]
    return ridge * float(positive.mean()) if positive.numel() else 0.0


def lasso_objective(problem: LassoProblem, weights: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``1/2 ||M w - z||^2 + lam ||w||_1`` per row."""
    return problem.loss(weights) + lam * weights.abs().sum(dim=1)


def kkt_violation(problem: LassoProblem, weights: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Largest violation of the LASSO optimality conditions per row, relative to ``lam``.

    With ``q = c - G w``: ``q_j = lam sign(w_j)`` on the support and ``|q_j| <= lam`` off it.
    """
    gradient = problem.gradient(weights)
    on = weights != 0
    scale = lam.clamp_min(torch.finfo(lam.dtype).tiny)[:, None]
    violation = torch.where(on, (gradient - lam[:, None] * torch.sign(weights)).abs(), (gradient.abs() - lam[:, None]).clamp_min(0))
    return (violation / scale).amax(dim=1) if weights.shape[1] else lam.new_zeros(lam.shape)


@dataclass
class _Batch:
    """The path state of the rows being moved (a copy, written back when they stop)."""

    rows: torch.Tensor  # positions in the full state
    lam: torch.Tensor
    index: torch.Tensor  # rows x K support coordinates (valid below size)
    signs: torch.Tensor  # rows x K
    size: torch.Tensor  # rows
    inverse: torch.Tensor  # rows x K x K inverse of G_SS + delta I (zero on padding)
    tracked: torch.Tensor  # rows x C coordinates whose correlations are followed (the support among them)
    q: torch.Tensor  # rows x C correlations c - (G + delta I) w at lam, on the tracked coordinates
    slack: torch.Tensor  # rows x d lam - |q_j| at the last refresh for the untracked (inf elsewhere); rows x 0 unscreened
    moved: torch.Tensor  # |lam| travelled since the last refresh
    spent: torch.Tensor  # sum of distance x gamma since the last refresh (the untracked correlations' drift bound)
    last_join: torch.Tensor  # coordinate that joined at the previous knot (-1: none)
    last_drop: torch.Tensor  # coordinate that left at the previous knot (-1: none)
    knots: torch.Tensor
    target: torch.Tensor
    radius: torch.Tensor  # inf: no radius stop
    at_radius: torch.Tensor
    running: torch.Tensor  # False once the row has stopped (it waits for the next compaction)

    def take(self, keep: torch.Tensor) -> _Batch:
        """The rows ``keep``, with the support arrays trimmed to their largest support."""
        taken = _Batch(**{name: getattr(self, name)[keep] for name in _BATCH_FIELDS})
        width = int(taken.size.max()) if taken.size.numel() else 0
        taken.index, taken.signs = taken.index[:, :width], taken.signs[:, :width]
        taken.inverse = taken.inverse[:, :width, :width]
        return taken


_BATCH_FIELDS = tuple(_Batch.__dataclass_fields__)


@dataclass
class MoveStats:
    """What one ``move`` did, per moved row.

    Attributes:
        knots: knots traversed (support changes; the final stop counts as one).
        at_radius: the row stopped because ``||w_K||_1`` reached its radius.
        exhausted: the row hit ``max_knots`` before its target.
        steps: batched steps the move took (the longest row's knots).
    """

    knots: torch.Tensor
    at_radius: torch.Tensor
    exhausted: torch.Tensor
    steps: int


class LassoPath:
    """Exact solutions ``w_r(lam_r)`` of every row's penalised LASSO, moved along their paths.

    A new path is at ``lam = lam_max`` (``w = 0``) for every row. ``move`` takes chosen rows to new
    penalties (or to where ``||w_K||_1`` reaches a radius); ``weights`` returns the current
    solutions. The state (supports, signs, inverses, penalties) persists between moves, which is
    what makes warm starts free.

    Args:
        problem: the shared Gram matrix and the rows' correlations.
        settings: ridge and knot budget.
        mask: boolean mask over the d coordinates counted in ``||w_K||_1`` (default: all).

    Screening: a step needs the correlations ``q_j`` only for coordinates that can join soon. Each
    row tracks its support and the ``settings.screen`` inactive coordinates nearest to joining; for
    the others the slack ``lam - |q_j|`` of the last refresh is kept and bounded from below with
    ``|dq_j / dlam| = |M_j^T M_S u| <= sqrt(G_jj) sqrt(s_S^T u)`` (Cauchy-Schwarz; ``G_SS u = s_S``).
    A step never goes further than where an untracked coordinate could reach ``+-lam``; when that
    limit binds, the row stops there (a point of the path like any other) and is refreshed: its
    correlations are recomputed exactly for all coordinates (one GEMM) and the tracked set is chosen
    again. The path stays exact; only the work per step shrinks from ``d`` to the tracked columns.
    """

    # Every this many steps the tracked correlations are recomputed exactly and every row's
    # optimality conditions on its support are checked; a row whose inverse has drifted (rank-one
    # updates of an ill-conditioned G_SS accumulate rounding) gets it recomputed from G_SS.
    check_every = 16
    # Largest drift of q_S from lam s_S (relative to lam) accepted before an inverse is recomputed.
    drift_tolerance = 1e-10

    def __init__(self, problem: LassoProblem, settings: PathSettings = PathSettings(), mask: torch.Tensor | None = None) -> None:
        self.problem = problem
        self.settings = settings
        gram = problem.gram
        rows, d = problem.rows, problem.features
        self.dtype, self.device = gram.dtype, gram.device
        diagonal = gram.diagonal()
        self.delta = ridge_delta(gram, settings.ridge)
        self.mask = (
            torch.ones(d, dtype=self.dtype, device=self.device)
            if mask is None
            else mask.to(device=self.device, dtype=self.dtype)
        )
        # A coordinate whose column of M is zero never enters a support.
        self.dead = diagonal <= 0
        self.column_norms = diagonal.clamp_min(0).sqrt()
        self.lam_max = problem.lambda_max()
        self.lam = self.lam_max.clone()
        self.capacity = 0
        self.index = torch.zeros(rows, 0, dtype=torch.long, device=self.device)
        self.signs = torch.zeros(rows, 0, dtype=self.dtype, device=self.device)
        self.size = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.inverse = torch.zeros(rows, 0, 0, dtype=self.dtype, device=self.device)
        self.refreshes = 0
        self.screen_refreshes = 0

    # ------------------------------------------------------------------ state
    @property
    def rows(self) -> int:
        return self.problem.rows

    def reset(self, rows: torch.Tensor) -> None:
        """Put ``rows`` back at ``lam_max`` with an empty support (a cold start)."""
        self.lam[rows] = self.lam_max[rows]
        self.size[rows] = 0
        self.signs[rows] = 0
        self.inverse[rows] = 0

    def weights(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The current solutions of ``rows`` (default: all), exact zeros off the supports."""
        batch = self._batch(self._rows(rows), with_q=False)
        offset, direction = self._support_solve(batch)
        return self._scatter(batch, offset - batch.lam[:, None] * direction)

    def norms(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``||w_K||_1`` of the current solutions and its derivative in ``lam`` on the current piece."""
        batch = self._batch(self._rows(rows), with_q=False)
        offset, direction = self._support_solve(batch)
        counted = torch.where(self._valid(batch), self.mask[batch.index], 0.0) * batch.signs
        norm = (counted * (offset - batch.lam[:, None] * direction)).sum(dim=1)
        return norm, -(counted * direction).sum(dim=1)

    def _rows(self, rows: torch.Tensor | None) -> torch.Tensor:
        return torch.arange(self.rows, device=self.device) if rows is None else rows.to(device=self.device, dtype=torch.long)

    # ------------------------------------------------------------------ moving
    @full_precision
    def move(self, rows: torch.Tensor, target: torch.Tensor, radius: torch.Tensor | None = None) -> MoveStats:
        """Move ``rows`` along their paths towards the penalties ``target`` (clamped to ``[0, lam_max]``).

        With ``radius`` (one value per row), a row stops early where ``||w_K||_1`` crosses its
        radius (moving down from inside the ball, or up from outside it).
        """
        rows = self._rows(rows)
        count = rows.numel()
        knots = torch.zeros(count, dtype=torch.long, device=self.device)
        at_radius = torch.zeros(count, dtype=torch.bool, device=self.device)
        exhausted = torch.zeros(count, dtype=torch.bool, device=self.device)
        if count == 0:
            return MoveStats(knots, at_radius, exhausted, 0)
        batch = self._batch(rows, with_q=True)
        batch.target = torch.minimum(target.to(self.lam).clamp_min(0), self.lam_max[rows])
        if radius is not None:
            batch.radius = radius.to(self.lam).expand(count).clone()
        where = torch.arange(count, device=self.device)  # batch position -> position in this move's stats
        steps = 0
        while batch.rows.numel():
            steps += 1
            if steps % self.check_every == 0:
                self._resync(batch)
            finished = self._step(batch)
            exhausted_now = batch.running & ~finished & (batch.knots >= self.settings.max_knots)
            newly = batch.running & (finished | exhausted_now)
            if bool(newly.any()):
                knots[where[newly]] = batch.knots[newly]
                at_radius[where[newly]] = batch.at_radius[newly]
                exhausted[where[newly]] = exhausted_now[newly]
                batch.running = batch.running & ~newly
            # Stopped rows are written back in groups, so that the long paths do not carry the short
            # ones and the copies stay few.
            if int(batch.running.sum()) < 0.75 * batch.rows.numel():
                done = batch.take((~batch.running).nonzero().flatten())
                self._resync(done)
                self._store(done)
                keep = batch.running.nonzero().flatten()
                batch, where = batch.take(keep), where[keep]
        return MoveStats(knots, at_radius, exhausted, steps)

    def _batch(self, rows: torch.Tensor, with_q: bool) -> _Batch:
        count = rows.numel()
        none = torch.full((count,), -1, dtype=torch.long, device=self.device)
        width = int(self.size[rows].max()) if count else 0
        zeros = self.lam.new_zeros(count)
        batch = _Batch(
            rows=rows,
            lam=self.lam[rows].clone(),
            index=self.index[rows, :width].clone(),
            signs=self.signs[rows, :width].clone(),
            size=self.size[rows].clone(),
            inverse=self.inverse[rows, :width, :width].clone(),
            tracked=torch.zeros(count, 0, dtype=torch.long, device=self.device),
            q=self.lam.new_zeros(count, 0),
            slack=self.lam.new_zeros(count, 0),
            moved=zeros,
            spent=zeros.clone(),
            last_join=none,
            last_drop=none.clone(),
            knots=torch.zeros(count, dtype=torch.long, device=self.device),
            target=self.lam[rows].clone(),
            radius=torch.full((count,), float("inf"), dtype=self.dtype, device=self.device),
            at_radius=torch.zeros(count, dtype=torch.bool, device=self.device),
            running=torch.ones(count, dtype=torch.bool, device=self.device),
        )
        if with_q:
            self._refresh_tracking(batch, torch.arange(count, device=self.device))
        return batch

    def _current(self, batch: _Batch) -> torch.Tensor:
        offset, direction = self._support_solve(batch)
        return offset - batch.lam[:, None] * direction

    def _correlations(self, batch: _Batch) -> torch.Tensor:
        """``q = c - (G + delta I) w`` at the batch's current solutions, for all d coordinates."""
        return self.problem.correlations[batch.rows] - self._gram_times(batch.index, self._valid(batch), self._current(batch))

    def _screened(self, batch: _Batch) -> bool:
        return batch.slack.shape[1] > 0

    def _refresh_tracking(self, batch: _Batch, rows: torch.Tensor) -> None:
        """Exact correlations of ``rows`` for every coordinate; choose again what they track."""
        d = self.problem.features
        width = int(batch.size[rows].max()) + self.settings.screen if rows.numel() else 0
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

    def _gamma(self, batch: _Batch) -> torch.Tensor:
        """``sqrt(s_S^T u)`` per row: bounds ``|dq_j/dlam| <= sqrt(G_jj) gamma`` off the support."""
        _, direction = self._support_solve(batch)
        return (batch.signs * direction).sum(dim=1).clamp_min(0).sqrt()

    def _tracked_gram_times(self, batch: _Batch, values: torch.Tensor) -> torch.Tensor:
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

    def _resync(self, batch: _Batch) -> None:
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

    def _refresh(self, batch: _Batch, rows: torch.Tensor) -> None:
        """Recompute ``(G_SS + delta I)^{-1}`` of ``rows`` from the Gram matrix."""
        self.refreshes += int(rows.numel())
        width = batch.index.shape[1]
        valid = self._valid(batch)[rows]
        index = batch.index[rows]
        both = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(width, dtype=self.dtype, device=self.device)
        restricted = self.problem.gram[index[:, :, None], index[:, None, :]] + self.delta * eye
        factor, _ = torch.linalg.cholesky_ex(torch.where(both, restricted, eye))
        batch.inverse[rows] = torch.where(both, torch.cholesky_inverse(factor), 0.0)

    def _store(self, batch: _Batch) -> None:
        width = batch.index.shape[1]
        self._grow(width)
        rows = batch.rows
        self.inverse[rows] = 0
        self.inverse[rows, :width, :width] = batch.inverse
        self.lam[rows] = batch.lam
        self.size[rows] = batch.size
        self.index[rows, :width] = batch.index
        self.signs[rows] = 0
        self.signs[rows, :width] = batch.signs

    def _grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        self.index, self.signs, self.inverse = _padded(self.index, self.signs, self.inverse, capacity)
        self.capacity = capacity

    # ------------------------------------------------------------------ one knot
    def _valid(self, batch: _Batch) -> torch.Tensor:
        return torch.arange(batch.index.shape[1], device=self.device)[None, :] < batch.size[:, None]

    def _support_solve(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``p = G_SS^{-1} c_S`` and ``u = G_SS^{-1} s_S`` (support-shaped, zero on padding)."""
        valid = self._valid(batch)
        correlations = self.problem.correlations[batch.rows].gather(1, batch.index)
        rhs = torch.stack([torch.where(valid, correlations, 0.0), batch.signs], dim=2)
        if rhs.shape[1] == 0:
            return rhs[..., 0], rhs[..., 1]
        solution = torch.bmm(batch.inverse, rhs)
        return solution[..., 0], solution[..., 1]

    def _scatter(self, batch: _Batch, values: torch.Tensor) -> torch.Tensor:
        return _scatter(batch.index, self._valid(batch), values, self.problem.features)

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
            out = _scatter(index, valid, values, d) @ self.problem.gram
        else:
            position = torch.searchsorted(union, index.contiguous()).clamp_max(union.numel() - 1)
            compact = values.new_zeros(values.shape[0], union.numel()).scatter_add(1, position, masked)
            out = compact @ self.problem.gram.index_select(0, union)
        if self.delta:
            out = out.scatter_add(1, index, self.delta * masked)
        return out

    def _step(self, batch: _Batch) -> torch.Tensor:
        """Move every row of ``batch`` to its next knot; returns the rows that have stopped."""
        count, d = batch.rows.numel(), self.problem.features
        lam, q, tracked = batch.lam, batch.q, batch.tracked
        tiny = torch.finfo(self.dtype).tiny
        inf = torch.full((count,), float("inf"), dtype=self.dtype, device=self.device)
        no_index = torch.zeros(count, dtype=torch.long, device=self.device)
        run = batch.running
        # Moving down (sigma = -1) or up the path: lam' = lam + sigma * distance.
        sigma = torch.where(batch.target < lam, -1.0, 1.0).to(self.dtype)
        valid = self._valid(batch)
        offset, direction = self._support_solve(batch)
        # On this piece w_S(lam') = offset - lam' direction and q(lam') = q + (lam' - lam) slope.
        slope = self._tracked_gram_times(batch, direction)
        weights = offset - lam[:, None] * direction
        immediate = (_IMMEDIATE * lam.clamp_min(tiny))[:, None]

        # Joins: a tracked inactive |q_j| reaching lam'. h = +-q_j - lam <= 0 changes at rate sigma (+-slope_j - 1).
        counts = torch.zeros(count, d, dtype=torch.int32, device=self.device).scatter_add(1, batch.index, valid.to(torch.int32))
        inactive = (counts.gather(1, tracked) == 0) & ~self.dead[tracked] & run[:, None]
        join_distance = torch.full(q.shape, float("inf"), dtype=self.dtype, device=self.device)
        join_sign = torch.ones(q.shape, dtype=self.dtype, device=self.device)
        for sign in (1.0, -1.0):
            h = sign * q - lam[:, None]
            rate = sigma[:, None] * (sign * slope - 1.0)
            distance = torch.where(rate > 0, (-h).clamp_min(0) / rate.clamp_min(tiny), float("inf"))
            distance = torch.where(h > VIOLATION * lam[:, None], 0.0, distance)
            better = distance < join_distance
            join_distance = torch.where(better, distance, join_distance)
            join_sign = torch.where(better, sign, join_sign)
        join_distance = torch.where(inactive, join_distance, float("inf"))
        # The coordinate that just left re-enters only after a real move (no zero-length cycles).
        just_left = (tracked == batch.last_drop[:, None]) & (join_distance <= immediate)
        join_distance = torch.where(just_left, float("inf"), join_distance)
        join_best, join_at = join_distance.min(dim=1) if q.shape[1] else (inf, no_index)

        # Drops: s_k w_k >= 0 reaching zero at rate sigma s_k u_k; the coordinate that just joined
        # leaves only after a real move.
        signed = batch.signs * weights
        rate = sigma[:, None] * batch.signs * direction
        drop_distance = torch.where(rate > 0, signed.clamp_min(0) / rate.clamp_min(tiny), float("inf"))
        drop_distance = torch.where(signed < 0, 0.0, drop_distance)
        just_joined = batch.index == batch.last_join[:, None]
        drop_distance = torch.where(valid & run[:, None] & ~(just_joined & (drop_distance <= immediate)), drop_distance, float("inf"))
        drop_best, drop_at = drop_distance.min(dim=1) if drop_distance.shape[1] else (inf, no_index)

        # Radius: ||w_K||_1 is affine on the piece.
        counted = torch.where(valid, self.mask[batch.index], 0.0) * batch.signs
        norm = (counted * weights).sum(dim=1)
        norm_rate = -sigma * (counted * direction).sum(dim=1)  # d norm / d distance
        gap = batch.radius - norm
        bounded = torch.isfinite(batch.radius)
        radius_distance = torch.where(
            bounded & (norm_rate != 0) & (gap * norm_rate >= 0), gap / torch.where(norm_rate != 0, norm_rate, 1.0), inf
        )
        radius_distance = torch.where(bounded & (gap == 0), 0.0, radius_distance)
        target_distance = (sigma * (batch.target - lam)).clamp_min(0)

        # Screening: no further than an untracked coordinate could get to the boundary.
        gamma = (batch.signs * direction).sum(dim=1).clamp_min(0).sqrt()
        if self._screened(batch):
            bound = self.column_norms[None, :]
            left = batch.slack - batch.moved[:, None] - bound * batch.spent[:, None]
            horizon = (left.clamp_min(0) / (1.0 + bound * gamma[:, None])).amin(dim=1)
        else:
            horizon = inf

        # A row that has stopped stays where it is.
        stop_distance = torch.where(run, torch.minimum(radius_distance, target_distance), 0.0)
        step = torch.minimum(torch.minimum(join_best, drop_best), torch.minimum(stop_distance, horizon))
        # At equal distances the support is repaired first, so that a stop leaves a consistent state.
        # A coefficient reaching zero within rounding of the stop leaves too (exact zeros at the end).
        dropping = drop_best <= step + immediate[:, 0]
        joining = ~dropping & (join_best <= step)
        stopping = ~dropping & ~joining & (stop_distance <= step)
        refreshing = run & ~dropping & ~joining & ~stopping
        by_radius = stopping & run & (radius_distance <= target_distance)
        new_lam = torch.where(stopping & ~by_radius, batch.target, lam + sigma * step).clamp_min(0)
        new_lam = torch.where(run, new_lam, lam)
        moved = (new_lam - lam).abs()
        batch.q = q + (new_lam - lam)[:, None] * slope
        batch.moved = batch.moved + moved
        batch.spent = batch.spent + moved * gamma
        batch.lam = new_lam
        batch.knots += (run & ~refreshing).long()
        batch.at_radius = batch.at_radius | by_radius
        batch.last_join = torch.full_like(batch.last_join, -1)
        batch.last_drop = torch.full_like(batch.last_drop, -1)
        if bool(joining.any()):
            self._join(batch, joining, tracked.gather(1, join_at[:, None])[:, 0], join_sign.gather(1, join_at[:, None])[:, 0])
        if bool(dropping.any()):
            self._drop(batch, dropping.nonzero().flatten(), drop_at)
        if bool(refreshing.any()):
            self.screen_refreshes += int(refreshing.sum())
            self._refresh_tracking(batch, refreshing.nonzero().flatten())
        return stopping | ~run

    def _join(self, batch: _Batch, joining: torch.Tensor, coordinate: torch.Tensor, sign: torch.Tensor) -> None:
        """Append ``coordinate[r]`` to the support of the ``joining`` rows (bordered inverse)."""
        needed = int(batch.size[joining].max()) + 1
        width = batch.index.shape[1]
        if needed > width:
            batch.index, batch.signs, batch.inverse = _padded(
                batch.index, batch.signs, batch.inverse, max(needed, width + width // 4 + 8)
            )
            width = batch.index.shape[1]
        rows = joining.nonzero().flatten()
        joined, position = coordinate[rows], batch.size[rows]
        gram = self.problem.gram
        # Every row of the batch takes part (zero vectors for the others): in-place products, no copies.
        cross = torch.where(self._valid(batch) & joining[:, None], gram[batch.index, coordinate[:, None]], 0.0)
        solved = torch.bmm(batch.inverse, cross[:, :, None])[:, :, 0]  # G_SS^{-1} g
        diagonal = gram[coordinate, coordinate] + self.delta
        # The Schur complement; rounding can make it non-positive for a (nearly) collinear column.
        floor = (self.delta + torch.finfo(self.dtype).eps) * diagonal.clamp_min(1.0)
        schur = torch.where(joining, torch.maximum(diagonal - (cross * solved).sum(dim=1), floor), 1.0)
        batch.inverse.baddbmm_(solved[:, :, None], (solved / schur[:, None])[:, None, :])
        # Row and column `position` are still zero (padding): the border goes into both.
        border = -solved[rows] / schur[rows, None]
        picked = torch.arange(rows.numel(), device=self.device)
        border[picked, position] = 1.0 / schur[rows]
        batch.inverse[rows, position, :] = border
        batch.inverse[rows, :, position] = border
        batch.index[rows, position] = joined
        batch.signs[rows, position] = sign[rows]
        batch.size[rows] += 1
        batch.last_join[rows] = joined

    def _drop(self, batch: _Batch, rows: torch.Tensor, position: torch.Tensor) -> None:
        """Remove the support coordinate at ``position[r]`` of each row in ``rows``.

        The inverse of ``G_SS`` without coordinate p is ``Gi - Gi[:, p] Gi[p, :] / Gi[p, p]``
        (its row and column p are then zero); the last support coordinate moves into the hole.
        """
        where = position[rows]
        last = batch.size[rows] - 1
        batch.last_drop[rows] = batch.index[rows, where]
        picked = torch.arange(rows.numel(), device=self.device)
        inverse = batch.inverse[rows]
        column = inverse[picked, :, where]
        inverse = inverse - column[:, :, None] * column[:, None, :] / column[picked, where][:, None, None]
        # Move the last coordinate into position p (a symmetric permutation), then cut the last one off.
        width = inverse.shape[1]
        permutation = torch.arange(width, device=self.device).expand(rows.numel(), -1).clone()
        permutation[picked, where] = last
        permutation[picked, last] = where
        inverse = inverse.gather(1, permutation[:, :, None].expand(-1, -1, width)).gather(2, permutation[:, None, :].expand(-1, width, -1))
        keep = torch.arange(width, device=self.device)[None, :] < last[:, None]
        inverse = torch.where(keep[:, :, None] & keep[:, None, :], inverse, 0.0)
        index = batch.index[rows].gather(1, permutation)
        signs = batch.signs[rows].gather(1, permutation)
        batch.inverse[rows] = inverse
        batch.index[rows] = torch.where(keep, index, 0)
        batch.signs[rows] = torch.where(keep, signs, 0.0)
        batch.size[rows] = last


def _padded(
    index: torch.Tensor, signs: torch.Tensor, inverse: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support arrays widened to ``capacity`` (zero indices, signs and inverse entries)."""
    rows, width = index.shape
    extra = capacity - width
    wider = inverse.new_zeros(rows, capacity, capacity)
    wider[:, :width, :width] = inverse
    return (
        torch.cat([index, index.new_zeros(rows, extra)], dim=1),
        torch.cat([signs, signs.new_zeros(rows, extra)], dim=1),
        wider,
    )


def _scatter(index: torch.Tensor, valid: torch.Tensor, values: torch.Tensor, features: int) -> torch.Tensor:
    """Support-shaped ``values`` (rows x K at ``index``) as a dense rows x ``features`` matrix."""
    full = values.new_zeros(values.shape[0], features)
    return full.scatter_add(1, index, torch.where(valid, values, 0.0))


@full_precision
def solve_lasso(
    problem: LassoProblem, lam: torch.Tensor, settings: PathSettings = PathSettings()
) -> tuple[torch.Tensor, MoveStats]:
    """Every row's penalised LASSO at its own penalty ``lam[r]`` (exact, from ``lam_max``)."""
    path = LassoPath(problem, settings)
    rows = torch.arange(problem.rows, device=problem.gram.device)
    stats = path.move(rows, lam)
    return path.weights(), stats
