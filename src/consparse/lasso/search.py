"""Constrained LASSO ``min 1/2 ||M w - z||^2 s.t. ||w_K||_1 <= kappa`` through the penalised path.

Algorithms 1 and 2 of Tsai, Gao & El Ghaoui (ACML 2024): solve the penalised LASSO
``min 1/2 ||M w - z||^2 + lam ||w||_1`` and bisect on ``lam`` until the solution's L1 norm meets
the radius, warm-starting every solve from the previous one. ``||w(lam)||_1`` is non-increasing in
``lam`` and ``w = 0`` for ``lam >= lam_max = ||M^T z||_inf``, so ``lam_max`` is always feasible.

Every row searches its own penalty, all rows at once, on a ``consparse.lasso.path.LassoPath``
(exact penalised solutions; a solve from the previous penalty only pays for the path in between).
``step`` chooses how the next penalty is proposed (each is a solver of ``consparse.lasso.solvers``):

* ``bisect``: the paper's bisection: halve ``lam`` (from ``lam_max / 2``) while the solution is
  feasible, down to the floor ``lambda_min_ratio * lam_max``; once an infeasible penalty is known,
  take geometric midpoints of the bracket; stop when ``| ||w_K||_1 - kappa | <= eps * kappa``;
* ``newton``: the same bracket, but jump to where the current linear piece of the path reaches the
  radius (``||w_K(lam)||_1`` is piecewise linear), falling back to the midpoint outside the bracket;
* ``path``: no penalised solves in between: move along the path and stop where ``||w_K||_1``
  crosses the radius (homotopy; the fewest knots).

With ``polish`` a bisection ends by moving along the path from its last solution to where
``||w_K||_1 = kappa`` exactly, so every active row ends on the sphere with the exact constrained
optimum (exact zeros off the support); without it, the feasible end of the bracket is kept, as in
the paper. A row feasible at the floor has an inactive constraint and keeps the floor solution.

``K`` (the path's ``mask``) selects the coordinates counted in the radius: all of them for the
whole row, the A-part only for ``constrain: A`` (the penalty still applies to the whole row; the
search then finds the first crossing of the radius from the feasible side).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.lasso.path import LassoPath, PathSettings
from consparse.lasso.problem import LassoProblem
from consparse.lasso.solution import ConstrainedLassoSolution
from consparse.validation import check_choice, check_int, check_range

PATH_STEPS = ("path", "newton", "bisect")


@dataclass(frozen=True)
class SearchSettings:
    """Settings of a constrained-LASSO search on the path (the solvers ``path``, ``newton``, ``bisect``).

    Attributes:
        step: ``path``, ``newton`` or ``bisect`` (see the module doc).
        eps: a bisection stops when ``||w_K||_1`` is within ``eps * kappa`` of the radius.
        max_steps: penalised solves per row at most (bisect, newton).
        lambda_min_ratio: the smallest penalty tried, relative to the row's ``lam_max``.
        warm_start: start each penalised solve from the previous solution (False: from ``lam_max``,
            which is what a solver without warm starts pays).
        polish: finish a bisection exactly on the sphere (see the module doc).
        ridge, max_knots, screen: the path's ``PathSettings``.
    """

    step: str = "path"
    eps: float = 1e-3
    max_steps: int = 60
    lambda_min_ratio: float = 1e-4
    warm_start: bool = True
    polish: bool = True
    ridge: float = PathSettings.ridge
    max_knots: int = PathSettings.max_knots
    screen: int = PathSettings.screen

    @property
    def path(self) -> PathSettings:
        return PathSettings(ridge=self.ridge, max_knots=self.max_knots, screen=self.screen)

    def validate(self, prefix: str = "") -> None:
        check_choice(f"{prefix}step", self.step, PATH_STEPS)
        check_range(f"{prefix}eps", self.eps, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_int(f"{prefix}max_steps", self.max_steps, 1)
        check_range(f"{prefix}lambda_min_ratio", self.lambda_min_ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_choice(f"{prefix}warm_start", self.warm_start, [True, False])
        check_choice(f"{prefix}polish", self.polish, [True, False])
        self.path.validate(prefix)


class PathSearch:
    """The constrained LASSO of every row of ``problem`` by a search on its exact path (kept: warm starts).

    Args:
        problem: the shared Gram matrix and the rows' correlations.
        settings: the search and its path.
        mask: the coordinates the radius counts (None: all).
    """

    Settings = SearchSettings
    handles_mask = True

    def __init__(self, problem: LassoProblem, settings: SearchSettings = SearchSettings(), mask: torch.Tensor | None = None) -> None:
        self.settings = settings
        self.path = LassoPath(problem, settings.path, mask)

    def solve(self, radius: float | torch.Tensor) -> ConstrainedLassoSolution:
        """Every row's solution for its radius (a number or one per row, > 0), from the previous one."""
        return constrained_lasso(self.path, radius, self.settings)


def constrained_lasso(
    path: LassoPath, radius: float | torch.Tensor, search: SearchSettings = SearchSettings()
) -> ConstrainedLassoSolution:
    """Solve every row's constrained LASSO, starting from the path's current solutions (a warm start).

    Args:
        path: the rows' penalised paths; their state is left at the returned solutions, so the next
            call (e.g. another radius) starts from here.
        radius: the radius (a number, or one per row), > 0.
        search: how the penalty is searched (its path settings are the path's own business).
    """
    if search.step not in PATH_STEPS:
        raise ValueError(f"constrained_lasso searches the path with one of {PATH_STEPS}, not {search.step!r}")
    rows = path.rows
    device, dtype = path.device, path.dtype
    radius = torch.as_tensor(radius, dtype=dtype, device=device).expand(rows).clone()
    if bool((radius <= 0).any()):
        raise ValueError("the radius of the constrained LASSO must be positive")
    everyone = torch.arange(rows, device=device)
    if not search.warm_start:
        path.reset(everyone)
    floor = search.lambda_min_ratio * path.lam_max
    steps = torch.zeros(rows, dtype=torch.long, device=device)
    knots = torch.zeros(rows, dtype=torch.long, device=device)
    exhausted = torch.zeros(rows, dtype=torch.bool, device=device)
    # A zero target (lam_max = 0) has the zero solution, on any path.
    live = everyone[path.lam_max > 0]

    def solve(chosen: torch.Tensor, target: torch.Tensor, stop_at_radius: bool) -> None:
        if not search.warm_start and not stop_at_radius:
            path.reset(chosen)
        moved = path.move(chosen, target, radius[chosen] if stop_at_radius else None)
        knots[chosen] += moved.knots
        exhausted[chosen] |= moved.exhausted

    if search.step == "path":
        norm, _ = path.norms(live)
        inside = norm <= radius[live]
        solve(live, torch.where(inside, floor[live], path.lam_max[live]), stop_at_radius=True)
        steps[live] += 1
    else:
        _bisect(path, live, radius, floor, search, solve, steps, exhausted)
    return ConstrainedLassoSolution.assess(
        path.problem, path.weights(), path.lam.clone(), radius, floor, path.mask, steps=steps, knots=knots, exhausted=exhausted
    )


def _bisect(path, live, radius, floor, search, solve, steps, exhausted) -> None:
    """The paper's bracket search (``bisect`` / ``newton``), then the optional polish."""
    device = path.device
    rows = path.rows
    norm, _ = path.norms()
    # The bracket: hi is a feasible penalty (its solution inside the ball), lo an infeasible one.
    feasible = norm <= radius
    hi = torch.where(feasible, path.lam, path.lam_max)
    lo = torch.where(feasible, torch.zeros_like(hi), path.lam)
    lo_known = ~feasible
    done = torch.ones(rows, dtype=torch.bool, device=device)
    done[live] = False
    lam = torch.where(lo_known, torch.sqrt(lo * hi), torch.maximum(floor, 0.5 * hi))
    at_floor = torch.zeros(rows, dtype=torch.bool, device=device)
    for _ in range(search.max_steps):
        going = (~done).nonzero().flatten()
        if going.numel() == 0:
            break
        solve(going, lam[going], stop_at_radius=False)
        steps[going] += 1
        norm, rate = path.norms(going)
        now = path.lam[going]
        inside = norm <= radius[going]
        hi[going] = torch.where(inside, now, hi[going])
        lo[going] = torch.where(inside, lo[going], now)
        lo_known[going] |= ~inside
        close = (norm - radius[going]).abs() <= search.eps * radius[going]
        # Without the polish only the feasible side may end the search (the paper's rule).
        close &= inside | search.polish
        floored = inside & ~close & (now <= floor[going] * (1 + 1e-12))
        collapsed = lo_known[going] & (hi[going] <= lo[going] * (1 + 1e-12))
        at_floor[going] = floored
        finished = close | floored | collapsed
        done[going] = finished
        midpoint = torch.where(lo_known[going], torch.sqrt(lo[going] * hi[going]), torch.maximum(floor[going], 0.5 * hi[going]))
        proposal = midpoint
        if search.step == "newton":
            # ||w_K(lam')||_1 = norm + (lam' - lam) * rate on the current piece.
            crossing = now + (radius[going] - norm) / torch.where(rate != 0, rate, 1.0)
            # Before an infeasible penalty is known, never go below the halving point: the tangent
            # of the (roughly convex) norm curve overshoots, and solves far below lam* are the costly ones.
            lower = torch.where(lo_known[going], lo[going], midpoint)
            usable = (rate < 0) & (crossing > lower) & (crossing < hi[going])
            proposal = torch.where(usable, crossing, midpoint)
        lam[going] = proposal
    exhausted |= ~done
    ended = (~at_floor).nonzero().flatten()
    ended = ended[torch.isin(ended, live)]
    if ended.numel() == 0:
        return
    norm, _ = path.norms(ended)
    inside = norm <= radius[ended]
    if search.polish:
        # Along the path from the last solution towards the other end of the bracket, stopping on the sphere.
        target = torch.where(inside, torch.where(lo_known[ended], lo[ended], floor[ended]), hi[ended])
        solve(ended, target, stop_at_radius=True)
    else:
        # The paper keeps the feasible end of the bracket.
        outside = ended[~inside]
        solve(outside, hi[outside], stop_at_radius=False)
