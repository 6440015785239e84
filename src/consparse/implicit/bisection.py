"""Constrained LASSO ``min 1/2 ||M w - z||^2 s.t. ||w_K||_1 <= kappa`` by bisection on the penalty.

Algorithms 1 and 2 of Tsai, Gao & El Ghaoui (ACML 2024): solve the penalised LASSO
``min 1/2 ||M w - z||^2 + lam ||w||_1`` and bisect on ``lam`` until the solution's L1 norm meets
the radius, warm-starting every solve from the previous one. ``||w(lam)||_1`` is non-increasing in
``lam`` and ``w = 0`` for ``lam >= lam_max = ||M^T z||_inf``, so ``lam_max`` is always feasible.

Every row bisects on its own penalty, all rows at once (``consparse.implicit.lasso.solve_lasso``):

1. start at ``lam_max / 2`` (or a given guess) and halve while the solution is feasible, down to
   the floor ``lambda_min_ratio * lam_max``; a row feasible at the floor has an inactive
   constraint and keeps that solution;
2. once an infeasible penalty is known, bisect geometrically (``sqrt(lo * hi)``) or, with
   ``step="newton"``, jump to where the current linear piece of the path reaches the radius (the
   LASSO path is piecewise linear: on a fixed support S with signs s, ``w_S(lam) = G_SS^{-1}(c_S -
   lam s_S)``), falling back to the midpoint when that point leaves the bracket;
3. polish: once ``| ||w_K||_1 - kappa | <= eps * kappa``, move along the solution's linear piece to
   the penalty where ``||w_K||_1 = kappa`` exactly and keep that point if the full KKT conditions
   hold there (then it is the exact constrained optimum, with exact zeros off the support);
4. stop when polished, when a feasible solution is within ``eps * kappa`` of the radius, when the
   bracket has collapsed or after ``max_steps`` (then the best feasible solution found is kept).

``K`` (``constrained``) selects the coordinates counted in the radius: all of them for the whole
row, the A-part only for ``constrain: A`` (the penalty still applies to the whole row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.implicit.lasso import LassoProblem, LassoSettings, SupportSystem, solve_lasso
from consparse.validation import check_choice, check_int, check_range

STEPS = ("bisect", "newton")
# Relative slack of the KKT check that accepts a polished point (rounding of the batched solves).
_KKT_TOLERANCE = 1e-7


@dataclass(frozen=True)
class BisectionSettings:
    """How the penalty is searched.

    Attributes:
        eps: stop when ``||w_K||_1`` is within ``eps * kappa`` of the radius.
        max_steps: penalised solves per row at most.
        lambda_min_ratio: the smallest penalty tried, relative to the row's ``lam_max``.
        step: ``bisect`` (geometric midpoint, the paper's bisection) or ``newton`` (the point where
            the current piece of the path meets the radius, safeguarded by the bracket).
        warm_start: start each penalised solve from the previous solution (False: from zero).
        polish: finish on the exact constrained optimum when the KKT check allows it.
    """

    eps: float = 1e-3
    max_steps: int = 50
    lambda_min_ratio: float = 1e-4
    step: str = "newton"
    warm_start: bool = True
    polish: bool = True

    def validate(self, prefix: str) -> None:
        check_range(f"{prefix}eps", self.eps, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_int(f"{prefix}max_steps", self.max_steps, 1)
        check_range(f"{prefix}lambda_min_ratio", self.lambda_min_ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_choice(f"{prefix}step", self.step, STEPS)


@dataclass
class ConstrainedLassoSolution:
    """Per-row result of ``constrained_lasso``.

    Attributes:
        weights: solutions (rows x d), exact zeros off the supports.
        lam: the penalty of each returned solution.
        norm: ``||w_K||_1`` of each solution (at most kappa).
        loss: ``1/2 ||M w - z||^2``.
        active: the constraint binds (the solution is on the sphere, not at the penalty floor).
        polished: the solution passed the exact KKT check at ``||w_K||_1 = kappa``.
        steps: penalised solves (bisection steps) spent on the row.
        sweeps: coordinate-descent sweeps over all those solves.
        converged: every penalised solve of the row met its duality-gap tolerance.
    """

    weights: torch.Tensor
    lam: torch.Tensor
    norm: torch.Tensor
    loss: torch.Tensor
    active: torch.Tensor
    polished: torch.Tensor
    steps: torch.Tensor
    sweeps: torch.Tensor
    converged: torch.Tensor


def constrained_lasso(
    problem: LassoProblem,
    kappa: float | torch.Tensor,
    constrained: torch.Tensor | None = None,
    lasso: LassoSettings = LassoSettings(),
    search: BisectionSettings = BisectionSettings(),
    init_weights: torch.Tensor | None = None,
    init_lambda: torch.Tensor | None = None,
) -> ConstrainedLassoSolution:
    """Solve every row's constrained LASSO by bisection on its penalty (see the module doc).

    Args:
        problem: the shared Gram matrix and the rows' correlations.
        kappa: the radius (a number, or one per row), > 0.
        constrained: boolean mask over the d coordinates counted in the radius (default: all).
        lasso: inner solver settings.
        search: bisection settings.
        init_weights: warm start of the first solve (rows x d), e.g. a previous radius's solution.
        init_lambda: first penalty tried per row (e.g. a previous radius's penalties).
    """
    rows, d = problem.rows, problem.features
    dtype, device = problem.gram.dtype, problem.gram.device
    radius = torch.as_tensor(kappa, dtype=dtype, device=device).expand(rows).clone()
    if bool((radius <= 0).any()):
        raise ValueError("the radius of the constrained LASSO must be positive")
    mask = torch.ones(d, dtype=dtype, device=device) if constrained is None else constrained.to(device=device, dtype=dtype)
    lam_max = problem.lambda_max()
    floor = search.lambda_min_ratio * lam_max

    hi = lam_max.clone()
    weights_hi = torch.zeros(rows, d, dtype=dtype, device=device)
    lo = torch.zeros(rows, dtype=dtype, device=device)
    lo_known = torch.zeros(rows, dtype=torch.bool, device=device)
    start = torch.zeros(rows, d, dtype=dtype, device=device) if init_weights is None else init_weights.to(dtype=dtype, device=device).clone()
    lam = 0.5 * lam_max if init_lambda is None else torch.minimum(torch.maximum(init_lambda.to(dtype=dtype, device=device), floor), lam_max)
    result = torch.zeros(rows, d, dtype=dtype, device=device)
    result_lam = lam_max.clone()
    polished = torch.zeros(rows, dtype=torch.bool, device=device)
    at_floor = torch.zeros(rows, dtype=torch.bool, device=device)
    steps = torch.zeros(rows, dtype=torch.long, device=device)
    sweeps = torch.zeros(rows, dtype=torch.long, device=device)
    converged = torch.ones(rows, dtype=torch.bool, device=device)
    # A zero target (lam_max = 0) has the zero solution; nothing to search.
    done = lam_max <= 0

    for _ in range(search.max_steps):
        active = (~done).nonzero().flatten()
        if active.numel() == 0:
            break
        solution = solve_lasso(problem.select(active), lam[active], start[active] if search.warm_start else None, lasso)
        w = solution.weights
        norm = (w.abs() * mask).sum(dim=1)
        steps[active] += 1
        sweeps[active] += solution.sweeps
        converged[active] &= solution.converged
        lam_now = lam[active]
        feasible = norm <= radius[active]
        start[active] = w
        hi[active] = torch.where(feasible, lam_now, hi[active])
        weights_hi[active] = torch.where(feasible[:, None], w, weights_hi[active])
        lo[active] = torch.where(feasible, lo[active], lam_now)
        lo_known[active] |= ~feasible

        row_close = (norm - radius[active]).abs() <= search.eps * radius[active]
        row_floor = feasible & ~row_close & (lam_now <= floor[active] * (1 + 1e-12))
        collapsed = lo_known[active] & (hi[active] <= lo[active] * (1 + 1e-12))
        row_polished = torch.zeros_like(row_close)
        if search.polish and bool(row_close.any()):
            near = row_close.nonzero().flatten()
            exact, exact_lam, ok = _polish(problem.select(active[near]), w[near], radius[active[near]], mask)
            row_polished[near] = ok
            index = active[near[ok]]
            result[index], result_lam[index] = exact[ok], exact_lam[ok]
        polished[active] = row_polished
        at_floor[active] = row_floor
        # A close but infeasible solution that could not be polished keeps the search going.
        finished = row_polished | (row_close & feasible) | row_floor | collapsed
        done[active] = finished
        plain = active[finished & ~row_polished]
        result[plain] = torch.where(at_floor[plain, None], start[plain], weights_hi[plain])
        result_lam[plain] = torch.where(at_floor[plain], lam[plain], hi[plain])

        going = ~finished
        if not bool(going.any()):
            break
        index = active[going]
        lower = torch.where(lo_known[index], lo[index], floor[index])
        upper = hi[index]
        midpoint = torch.where(lo_known[index], torch.sqrt(lo[index] * hi[index]), torch.maximum(floor[index], 0.5 * upper))
        proposal = midpoint
        if search.step == "newton":
            piece = _piece_crossing(problem.select(index), w[going], radius[index], mask)
            # Before an infeasible penalty is known, never jump below the halving point: the tangent
            # of the (roughly convex) path overshoots, and solves far below lam* are the costly ones.
            lower = torch.where(lo_known[index], lower, midpoint)
            inside = piece.valid & (piece.crossing >= lower) & (piece.crossing < upper)
            proposal = torch.where(inside, piece.crossing, midpoint)
        lam[index] = proposal

    # Rows that ran out of steps keep their best feasible solution.
    unfinished = (~done).nonzero().flatten()
    result[unfinished], result_lam[unfinished] = weights_hi[unfinished], hi[unfinished]
    norm = (result.abs() * mask).sum(dim=1)
    # Rounding can leave a polished point a few ulps outside the ball; shrink it onto the sphere.
    excess = norm > radius
    result = torch.where(excess[:, None], result * (radius / norm.clamp_min(torch.finfo(dtype).tiny))[:, None], result)
    norm = (result.abs() * mask).sum(dim=1)
    return ConstrainedLassoSolution(
        weights=result,
        lam=result_lam,
        norm=norm,
        loss=problem.loss(result),
        active=~at_floor & (lam_max > 0),
        polished=polished,
        steps=steps,
        sweeps=sweeps,
        converged=converged,
    )


@dataclass
class _Piece:
    """The linear piece of the LASSO path through a solution: ``w_S(lam) = offset - lam direction``."""

    system: SupportSystem
    offset: torch.Tensor
    direction: torch.Tensor
    crossing: torch.Tensor
    valid: torch.Tensor


def _piece_crossing(problem: LassoProblem, weights: torch.Tensor, radius: torch.Tensor, mask: torch.Tensor) -> _Piece:
    """Where the linear piece of the path through ``weights`` meets the radius.

    On the support S with signs s, ``w_S(lam) = a - lam v`` with ``a = G_SS^{-1} c_S`` and
    ``v = G_SS^{-1} s_S``, so ``||w_K||_1 = s_K'a - lam s_K'v`` reaches ``kappa`` at
    ``lam* = (s_K'a - kappa) / s_K'v``.
    """
    system = SupportSystem.from_weights(problem.gram, weights)
    signs = system.signs
    counted = mask[system.index] * system.valid
    offset = system.solve(system.gather(problem.correlations))
    direction = system.solve(signs)
    slope = (signs * counted * direction).sum(dim=1)
    level = (signs * counted * offset).sum(dim=1)
    crossing = (level - radius) / torch.where(slope > 0, slope, torch.ones_like(slope))
    valid = system.ok & (slope > 0) & torch.isfinite(crossing) & (crossing > 0)
    return _Piece(system, offset, direction, crossing, valid)


def _polish(
    problem: LassoProblem, weights: torch.Tensor, radius: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact constrained optimum on the linear piece through ``weights``, where the KKT check passes.

    Returns ``(weights, lam, ok)``; ``ok`` is False where the piece's point at the radius has a
    sign change on the support or a violated optimality condition off it (the support would change
    before the radius is reached).
    """
    piece = _piece_crossing(problem, weights, radius, mask)
    lam, system = piece.crossing, piece.system
    values = piece.offset - lam[:, None] * piece.direction
    consistent = (~system.valid | (system.signs * values > 0)).all(dim=1)
    candidate = system.scatter(values, problem.rows, problem.features)
    gradient = problem.gradient(candidate)
    on_support = candidate != 0
    slack = _KKT_TOLERANCE * lam[:, None]
    target = lam[:, None] * torch.sign(candidate)
    kkt = torch.where(on_support, (gradient - target).abs() <= slack, gradient.abs() <= lam[:, None] + slack).all(dim=1)
    return candidate, lam, piece.valid & consistent & kkt
