"""Exact constrained LASSO for many rows at once: a batched active-set (working-set) method.

Each row solves ``min 1/2 w^T (G + delta I) w - c^T w  s.t.  ||w||_1 <= kappa`` on the shared Gram
matrix, i.e. the constrained solution the paper's bisection on the penalty converges to, with the
same penalty floor ``lambda_min_ratio * lam_max`` (a row whose constraint does not bind keeps the
penalised solution at the floor, as on ``consparse.lasso.path.LassoPath``).

Why this and not the path or FISTA: on the MNIST-mlp problem the exact path pays for every knot of
every row (about 110 per row) and a batch steps as long as its slowest row; projected FISTA needs
thousands of full ``rows x d x d`` products and still does not identify the supports (reference
implicit-models.md, section 8.2). The optimum, though, is known in closed form once its support
``S`` and signs ``s`` are: ``w_S = p - lam u`` with ``p = G_SS^{-1} c_S``, ``u = G_SS^{-1} s`` and
``lam = (s^T p - kappa) / (s^T u)`` (the point of the sphere), clamped to the floor. So every round

1. solves that system on each row's current support (one Cholesky factorisation per row, batched
   over rows of similar support size so that padding costs little);
2. checks the optimality conditions: signs ``s_j w_j > 0`` on the support and ``|q_j| <= lam`` off
   it, with ``q = c - (G + delta I) w`` (one product for the whole batch);
3. drops the coordinates whose sign broke and adds the worst violators (at most ``growth`` times
   the support size, at least a few), with the sign of their correlation.

A row whose conditions hold is exact (to rounding) and leaves the batch. The iteration is a
primal-dual active-set scheme without a convergence guarantee, and it can cycle: when a row's
support nears the design's rank (more features than samples, an overfitted teacher's states), a
round that adds half the support again breaks the signs of half of it, the next drops them, and the
support swings between two sizes for good. So a row whose count of infeasible coordinates (broken
signs plus violators) has not fallen below its best for ``stall_rounds`` rounds is damped, the
backup rule of block principal pivoting (Kim & Park 2011): from then on its growth halves after
every round that broke a sign and doubles again, up to ``growth``, after one that did not, so it
approaches its support in steps small enough to keep the signs. Rows that converge on their own
are never damped, so they pay nothing for it. A row that is still not resolved within
``max_rounds`` (or whose ``G_SS`` is numerically singular: duplicated or dependent columns without a
ridge) is solved on the exact path instead; the solution reports it (``fallback``). With the ridge,
duplicated columns may share a coefficient here where the path keeps one of them: both are optima
of the LASSO (the same fit and ``||w||_1``). Warm starts: a new solve starts from the previous solution's
support, which is what the outer search over radii reuses. Solves run with autocast off, in the
statistics' dtype (``consparse.precision``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.lasso.path import LassoPath, PathSettings
from consparse.lasso.problem import VIOLATION, LassoProblem, ridge_delta
from consparse.lasso.search import SearchSettings, constrained_lasso
from consparse.lasso.solution import ConstrainedLassoSolution
from consparse.precision import full_precision
from consparse.validation import check_choice, check_int, check_range

# Coordinates a round may add to a row at least (the first round of a cold start adds this many).
_MIN_GROWTH = 8


@dataclass(frozen=True)
class ActiveSetSettings:
    """Settings of the ``active_set`` solver.

    Attributes:
        step: ``active_set`` (the solver's name in ``consparse.lasso.solvers``).
        max_rounds: rounds (factorise, check, update) before a row is handed to the exact path.
        growth: a round adds at most this fraction of the row's support size (and at least 8).
        stall_rounds: rounds without fewer infeasible coordinates than the row's best before its
            growth is damped (halved after a round that broke a sign, doubled after one that did not).
        row_group: rows factorised together, taken in order of support size.
        lambda_min_ratio: the penalty floor, relative to the row's ``lam_max``.
        warm_start: start from the previous solve's supports.
        ridge, max_knots, screen: ``PathSettings`` of the exact path the unresolved rows fall back
            to; its ``ridge`` is the ``delta`` here as well, so both solve the same problem.
    """

    step: str = "active_set"
    max_rounds: int = 300
    growth: float = 0.5
    stall_rounds: int = 3
    row_group: int = 8
    lambda_min_ratio: float = SearchSettings.lambda_min_ratio
    warm_start: bool = True
    ridge: float = PathSettings.ridge
    max_knots: int = PathSettings.max_knots
    screen: int = PathSettings.screen

    @property
    def fallback(self) -> SearchSettings:
        """The exact path's settings, for the rows (or masked blocks) this solver hands over."""
        return SearchSettings(
            step="path", lambda_min_ratio=self.lambda_min_ratio, warm_start=self.warm_start,
            ridge=self.ridge, max_knots=self.max_knots, screen=self.screen,
        )

    def validate(self, prefix: str = "") -> None:
        check_choice(f"{prefix}step", self.step, ["active_set"])
        check_int(f"{prefix}max_rounds", self.max_rounds, 1)
        check_range(f"{prefix}growth", self.growth, 0.0, 10.0, low_inclusive=False)
        check_int(f"{prefix}stall_rounds", self.stall_rounds, 1)
        check_int(f"{prefix}row_group", self.row_group, 1)
        self.fallback.validate(prefix)


class ActiveSet:
    """The constrained LASSO of every row of ``problem`` (whole row in the ball), warm-started across solves.

    Args:
        problem: the shared Gram matrix and the rows' correlations.
        settings: rounds, growth, grouping, the penalty floor and the fallback path.
        mask: must be None: a radius on part of the row is not this solver's problem (see the
            module doc of ``consparse.lasso.solvers``).
    """

    Settings = ActiveSetSettings
    handles_mask = False

    def __init__(self, problem: LassoProblem, settings: ActiveSetSettings = ActiveSetSettings(), mask: torch.Tensor | None = None) -> None:
        if mask is not None:
            raise ValueError("the active set constrains whole rows; solve a masked block on the path")
        self.problem = problem
        self.settings = settings
        self._flat_gram = problem.gram.contiguous().reshape(-1)
        self.delta = ridge_delta(problem.gram, settings.ridge)
        self.lam_max = problem.lambda_max()
        self.previous: torch.Tensor | None = None

    @full_precision
    def solve(self, radius: float | torch.Tensor) -> ConstrainedLassoSolution:
        """Every row's exact constrained solution for its radius (a number or one per row, > 0)."""
        problem, settings = self.problem, self.settings
        dtype, device = problem.gram.dtype, problem.gram.device
        rows, d = problem.rows, problem.features
        radius = torch.as_tensor(radius, dtype=dtype, device=device).expand(rows).clone()
        if bool((radius <= 0).any()):
            raise ValueError("the radius of the constrained LASSO must be positive")
        floor = settings.lambda_min_ratio * self.lam_max
        start = self.previous if settings.warm_start and self.previous is not None else None
        support = torch.zeros(rows, d, dtype=torch.bool, device=device) if start is None else start != 0
        signs = torch.zeros(rows, d, dtype=dtype, device=device) if start is None else torch.sign(start)
        weights, lam, rounds, unresolved = self._rounds(radius, floor, support, signs)
        knots = torch.zeros(rows, dtype=torch.long, device=device)
        exhausted = torch.zeros(rows, dtype=torch.bool, device=device)
        fallback = torch.zeros(rows, dtype=torch.bool, device=device)
        if unresolved.numel():
            path = LassoPath(problem.select(unresolved), settings.fallback.path)
            exact = constrained_lasso(path, radius[unresolved], settings.fallback)
            weights[unresolved], lam[unresolved] = exact.weights, exact.lam
            knots[unresolved], exhausted[unresolved] = exact.knots, exact.exhausted
            fallback[unresolved] = True
        self.previous = weights
        return ConstrainedLassoSolution.assess(
            problem, weights, lam, radius, floor, steps=rounds, knots=knots, exhausted=exhausted, fallback=fallback
        )

    def _rounds(
        self, radius: torch.Tensor, floor: torch.Tensor, support: torch.Tensor, signs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The active-set rounds; returns weights, penalties, rounds per row and the unresolved rows."""
        problem = self.problem
        rows, d = problem.rows, problem.features
        weights = problem.gram.new_zeros(rows, d)
        lam = self.lam_max.clone()
        rounds = torch.zeros(rows, dtype=torch.long, device=weights.device)
        live = torch.arange(rows, device=weights.device)
        damping = _Damping(rows, self.settings, weights)
        failed = []
        for round_number in range(1, self.settings.max_rounds + 1):
            current, penalty, singular = self._solve_on_support(support[live], signs[live], live, radius[live], floor[live])
            q = problem.correlations[live] - self._gram_times(current)
            on = support[live]
            broken = on & (signs[live] * current <= 0)
            violating = ~on & (q.abs() > penalty[:, None] * (1 + VIOLATION))
            rounds[live] = round_number
            damping.update(live, broken, violating)
            resolved = ~broken.any(dim=1) & ~violating.any(dim=1) & ~singular
            weights[live[resolved]], lam[live[resolved]] = current[resolved], penalty[resolved]
            failed.append(live[singular])
            keep = ~resolved & ~singular
            live, q, penalty, on, broken, violating = live[keep], q[keep], penalty[keep], on[keep], broken[keep], violating[keep]
            if live.numel() == 0:
                break
            added = self._worst(violating, q.abs() - penalty[:, None], on.sum(dim=1), damping.growth[live])
            on = (on & ~broken) | added
            support[live] = on
            signs[live] = torch.where(added, torch.sign(q), torch.where(on, signs[live], 0.0))
        return weights, lam, rounds, torch.cat([*failed, live]).sort().values

    def _gram_times(self, weights: torch.Tensor) -> torch.Tensor:
        """``w (G + delta I)`` for sparse rows: only the Gram rows of the union of the supports are read."""
        union = (weights != 0).any(dim=0).nonzero().flatten()
        return weights[:, union] @ self.problem.gram.index_select(0, union) + self.delta * weights

    def _worst(self, violating: torch.Tensor, excess: torch.Tensor, size: torch.Tensor, growth: torch.Tensor) -> torch.Tensor:
        """Per row, the violating coordinates with the largest excess ``|q_j| - lam``, as many as its growth allows."""
        allowed = (growth * size.to(excess.dtype)).ceil().long().clamp_min(_MIN_GROWTH)
        top = torch.where(violating, excess, -1.0).topk(min(int(allowed.max()), excess.shape[1]), dim=1)
        position = torch.arange(top.values.shape[1], device=excess.device)[None, :]
        chosen = (top.values > 0) & (position < allowed[:, None])
        return torch.zeros_like(violating).scatter(1, top.indices, chosen)

    def _solve_on_support(
        self, support: torch.Tensor, signs: torch.Tensor, rows: torch.Tensor, radius: torch.Tensor, floor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sphere point (or floor solution) of each row on its support and signs.

        Returns the weights (rows x d), the penalties and which rows' ``G_SS`` could not be factorised.
        """
        count, d = support.shape
        dtype, device = signs.dtype, signs.device
        weights = signs.new_zeros(count, d + 1)
        lam = floor.clone()
        singular = torch.zeros(count, dtype=torch.bool, device=device)
        size = support.sum(dim=1)
        order = size.argsort()
        coordinates = torch.arange(d, device=device)[None, :]
        for start in range(0, count, self.settings.row_group):
            group = order[start : start + self.settings.row_group]
            width = int(size[group].max())
            if width == 0:
                continue
            # Support coordinates first (ascending), padded with the out-of-range index d.
            index = torch.where(support[group], coordinates, d).sort(dim=1).values[:, :width]
            valid = index < d
            clamped = index.clamp_max(d - 1)
            eye = torch.eye(width, dtype=dtype, device=device)
            restricted = self._flat_gram.take(clamped[:, :, None] * d + clamped[:, None, :]) + self.delta * eye
            factor, info = torch.linalg.cholesky_ex(torch.where(valid[:, :, None] & valid[:, None, :], restricted, eye))
            s = torch.where(valid, signs[group].gather(1, clamped), 0.0)
            c = torch.where(valid, self.problem.correlations[rows[group]].gather(1, clamped), 0.0)
            half = torch.linalg.solve_triangular(factor, torch.stack([c, s], dim=2), upper=False)
            solved = torch.linalg.solve_triangular(factor.transpose(1, 2), half, upper=True)
            p, u = solved[..., 0], solved[..., 1]
            su = (s * u).sum(dim=1)
            # On the sphere: s^T (p - lam u) = kappa; a support whose least squares is inside the ball keeps the floor.
            penalty = torch.where(su > 0, ((s * p).sum(dim=1) - radius[group]) / su.clamp_min(torch.finfo(dtype).tiny), floor[group])
            penalty = torch.maximum(penalty, floor[group])
            lam[group] = penalty
            weights[group] = weights[group].scatter(1, index, torch.where(valid, p - penalty[:, None] * u, 0.0))
            singular[group] = (info != 0) | ~torch.isfinite(penalty)
        return weights[:, :d], lam, singular


class _Damping:
    """Each row's growth, damped once the row stalls (the module doc's backup rule)."""

    def __init__(self, rows: int, settings: ActiveSetSettings, like: torch.Tensor) -> None:
        self.settings = settings
        self.growth = like.new_full((rows,), settings.growth)
        self.best = torch.full((rows,), torch.iinfo(torch.long).max, dtype=torch.long, device=like.device)
        self.stalls = torch.zeros(rows, dtype=torch.long, device=like.device)
        self.damped = torch.zeros(rows, dtype=torch.bool, device=like.device)

    def update(self, live: torch.Tensor, broken: torch.Tensor, violating: torch.Tensor) -> None:
        """Record the ``live`` rows' round: their infeasible coordinates and whether a sign broke."""
        infeasible = broken.sum(dim=1) + violating.sum(dim=1)
        improved = infeasible < self.best[live]
        self.best[live] = torch.where(improved, infeasible, self.best[live])
        self.stalls[live] = torch.where(improved, 0, self.stalls[live] + 1)
        self.damped[live] |= self.stalls[live] >= self.settings.stall_rounds
        growth = self.growth[live]
        damped = torch.where(broken.any(dim=1), growth / 2, (growth * 2).clamp_max(self.settings.growth))
        self.growth[live] = torch.where(self.damped[live], damped, growth)
