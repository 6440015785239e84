"""Exact penalised LASSO solutions for many rows that share one Gram matrix, on the CPU or a GPU.

Each row r has the problem ``min_w 1/2 ||M w - z_r||^2 + lam_r ||w||_1`` on the same design ``M``
(``consparse.lasso.problem``).

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
  on the support drift, see ``LassoPath.check_every``; ``consparse.lasso.support``) and one GEMM with
  the Gram rows of the union of the supports (fewer with screening, ``consparse.lasso.screening``);
* a move can start anywhere on the path in either direction (a bisection goes down and back up),
  so a solve from a neighbouring penalty only pays for the knots in between: warm starts are exact.

The solutions are exact up to rounding: zeros off the support are exact zeros and the optimality
conditions hold to ~1e-12, with no tolerance to tune. A tiny ridge ``delta`` (relative to the mean
diagonal of ``G``) keeps ``G_SS + delta I`` positive definite on rank-deficient designs (more
features than samples, nearly collinear states); the path solved is that of
``1/2 w^T (G + delta I) w - c^T w + lam ||w||_1``. Dead (all-zero) columns never join, and a column
in the span of a row's support (duplicated or linearly dependent states) is kept out of it while it
is (``consparse.lasso.support``): the solution is then the sparsest of the tied optima.

Moves and solves run in the statistics' own dtype with autocast off (``consparse.precision``):
inside ``torch.autocast`` the knots' closed forms would otherwise come from bfloat16 products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.lasso.knots import (
    IMMEDIATE,
    drop_distances,
    join_distances,
    radius_distance,
    screening_horizon,
)
from consparse.lasso.problem import LassoProblem, ridge_delta
from consparse.lasso.screening import Screening
from consparse.lasso.support import PathBatch, SupportUpdates, padded
from consparse.precision import full_precision
from consparse.validation import check_int, check_range


@dataclass(frozen=True)
class PathSettings:
    """Numerical settings of ``LassoPath``.

    Attributes:
        ridge: ``delta`` relative to the mean diagonal of the Gram matrix (0: none; rank-deficient
            designs need some).
        max_knots: knots a row may traverse in one ``move`` before it is stopped (and reported).
        screen: inactive coordinates each row tracks beside its support (0: all of them); see
            ``consparse.lasso.screening``. Screening is used only where it leaves at most half the coordinates.
    """

    ridge: float = 1e-10
    max_knots: int = 20_000
    screen: int = 256

    def validate(self, prefix: str = "") -> None:
        check_range(f"{prefix}ridge", self.ridge, 0.0, 1e-2)
        check_int(f"{prefix}max_knots", self.max_knots, 1)
        check_int(f"{prefix}screen", self.screen, 0)


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


@dataclass
class _Piece:
    """The current piece of every row's path: where each kind of knot is (distances from ``lam``)."""

    sigma: torch.Tensor  # -1: moving down the path, +1: up
    slope: torch.Tensor  # d q / d lam on the tracked coordinates
    join: torch.Tensor  # nearest join distance, its tracked position and sign
    join_at: torch.Tensor
    join_sign: torch.Tensor
    drop: torch.Tensor  # nearest drop distance and its support position
    drop_at: torch.Tensor
    radius: torch.Tensor
    target: torch.Tensor
    horizon: torch.Tensor  # screening: no further than this
    gamma: torch.Tensor  # sqrt(s_S^T u), the untracked correlations' drift rate bound


class LassoPath(SupportUpdates, Screening):
    """Exact solutions ``w_r(lam_r)`` of every row's penalised LASSO, moved along their paths.

    A new path is at ``lam = lam_max`` (``w = 0``) for every row. ``move`` takes chosen rows to new
    penalties (or to where ``||w_K||_1`` reaches a radius); ``weights`` returns the current
    solutions. The state (supports, signs, inverses, blocked columns, penalties) persists between
    moves, which is what makes warm starts free.

    Args:
        problem: the shared Gram matrix and the rows' correlations.
        settings: ridge, knot budget and screening.
        mask: boolean mask over the d coordinates counted in ``||w_K||_1`` (default: all).
    """

    # Every this many steps the tracked correlations are recomputed exactly and every row's
    # optimality conditions on its support are checked; a row whose inverse has drifted (rank-one
    # updates of an ill-conditioned G_SS accumulate rounding) gets it recomputed from G_SS.
    check_every = 16

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
        self.blocked = torch.zeros(rows, d, dtype=torch.bool, device=self.device)
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
        self.blocked[rows] = False

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

    def _batch(self, rows: torch.Tensor, with_q: bool) -> PathBatch:
        count = rows.numel()
        none = torch.full((count,), -1, dtype=torch.long, device=self.device)
        width = int(self.size[rows].max()) if count else 0
        zeros = self.lam.new_zeros(count)
        batch = PathBatch(
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
            blocked=self.blocked[rows].clone(),
        )
        if with_q:
            self._refresh_tracking(batch, torch.arange(count, device=self.device))
        return batch

    def _store(self, batch: PathBatch) -> None:
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
        self.blocked[rows] = batch.blocked

    def _grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        self.index, self.signs, self.inverse = padded(self.index, self.signs, self.inverse, capacity)
        self.capacity = capacity

    # ------------------------------------------------------------------ one knot
    def _step(self, batch: PathBatch) -> torch.Tensor:
        """Move every row of ``batch`` to its next knot; returns the rows that have stopped."""
        lam, run = batch.lam, batch.running
        piece = self._piece(batch)
        immediate = IMMEDIATE * lam.clamp_min(torch.finfo(self.dtype).tiny)
        # A row that has stopped stays where it is.
        stop = torch.where(run, torch.minimum(piece.radius, piece.target), 0.0)
        step = torch.minimum(torch.minimum(piece.join, piece.drop), torch.minimum(stop, piece.horizon))
        # At equal distances the support is repaired first, so that a stop leaves a consistent state.
        # A coefficient reaching zero within rounding of the stop leaves too (exact zeros at the end).
        dropping = piece.drop <= step + immediate
        joining = ~dropping & (piece.join <= step)
        stopping = ~dropping & ~joining & (stop <= step)
        refreshing = run & ~dropping & ~joining & ~stopping
        by_radius = stopping & run & (piece.radius <= piece.target)
        new_lam = torch.where(stopping & ~by_radius, batch.target, lam + piece.sigma * step).clamp_min(0)
        new_lam = torch.where(run, new_lam, lam)
        moved = (new_lam - lam).abs()
        batch.q = batch.q + (new_lam - lam)[:, None] * piece.slope
        batch.moved = batch.moved + moved
        batch.spent = batch.spent + moved * piece.gamma
        batch.lam = new_lam
        batch.knots += (run & ~refreshing).long()
        batch.at_radius = batch.at_radius | by_radius
        # "Just joined / left" lasts until a real move (a knot at zero distance, e.g. a blocked tie, keeps it).
        batch.last_join = torch.where(moved > 0, -1, batch.last_join)
        batch.last_drop = torch.where(moved > 0, -1, batch.last_drop)
        if bool(joining.any()):
            at = piece.join_at[:, None]
            self._join(batch, joining, batch.tracked.gather(1, at)[:, 0], piece.join_sign.gather(1, at)[:, 0])
        if bool(dropping.any()):
            self._drop(batch, dropping.nonzero().flatten(), piece.drop_at)
        if bool(refreshing.any()):
            self.screen_refreshes += int(refreshing.sum())
            self._refresh_tracking(batch, refreshing.nonzero().flatten())
        return stopping | ~run

    def _piece(self, batch: PathBatch) -> _Piece:
        """Every kind of knot on the current piece of each running row (``consparse.lasso.knots``)."""
        count, lam, run = batch.rows.numel(), batch.lam, batch.running
        inf = torch.full((count,), float("inf"), dtype=self.dtype, device=self.device)
        no_index = torch.zeros(count, dtype=torch.long, device=self.device)
        sigma = torch.where(batch.target < lam, -1.0, 1.0).to(self.dtype)
        valid = self._valid(batch)
        offset, direction = self._support_solve(batch)
        slope = self._tracked_gram_times(batch, direction)
        weights = offset - lam[:, None] * direction
        immediate = (IMMEDIATE * lam.clamp_min(torch.finfo(self.dtype).tiny))[:, None]

        counts = torch.zeros(count, self.problem.features, dtype=torch.int32, device=self.device)
        on_support = counts.scatter_add(1, batch.index, valid.to(torch.int32)).gather(1, batch.tracked) > 0
        candidates = ~on_support & ~self.dead[batch.tracked] & ~batch.blocked.gather(1, batch.tracked) & run[:, None]
        join, join_sign = join_distances(batch.q, slope, lam, sigma, candidates)
        # The coordinate that just left re-enters only after a real move (no zero-length cycles).
        join = torch.where((batch.tracked == batch.last_drop[:, None]) & (join <= immediate), float("inf"), join)
        join_best, join_at = join.min(dim=1) if join.shape[1] else (inf, no_index)

        drop = drop_distances(batch.signs, weights, direction, sigma)
        # The coordinate that just joined leaves only after a real move.
        just_joined = (batch.index == batch.last_join[:, None]) & (drop <= immediate)
        drop = torch.where(valid & run[:, None] & ~just_joined, drop, float("inf"))
        drop_best, drop_at = drop.min(dim=1) if drop.shape[1] else (inf, no_index)

        counted = torch.where(valid, self.mask[batch.index], 0.0) * batch.signs
        gamma = (batch.signs * direction).sum(dim=1).clamp_min(0).sqrt()
        horizon = (
            screening_horizon(batch.slack, batch.moved, batch.spent, self.column_norms, gamma) if self._screened(batch) else inf
        )
        return _Piece(
            sigma=sigma, slope=slope, join=join_best, join_at=join_at, join_sign=join_sign, drop=drop_best, drop_at=drop_at,
            radius=radius_distance(counted, weights, direction, sigma, batch.radius),
            target=(sigma * (batch.target - lam)).clamp_min(0), horizon=horizon, gamma=gamma,
        )


@full_precision
def solve_lasso(
    problem: LassoProblem, lam: torch.Tensor, settings: PathSettings = PathSettings()
) -> tuple[torch.Tensor, MoveStats]:
    """Every row's penalised LASSO at its own penalty ``lam[r]`` (exact, from ``lam_max``)."""
    path = LassoPath(problem, settings)
    rows = torch.arange(problem.rows, device=problem.gram.device)
    stats = path.move(rows, lam)
    return path.weights(), stats
