"""Batched penalised LASSO for many rows that share one design matrix, on the CPU or a GPU.

Each row r solves ``min_w 1/2 ||M w - z_r||^2 + lam_r ||w||_1`` for the same ``M`` (m x d). Only the
sufficient statistics enter: the Gram matrix ``G = M^T M`` (d x d, shared), the correlations
``c_r = M^T z_r`` and ``||z_r||^2``, so the cost does not grow with the number of samples.

Why a solver of our own: scikit-learn's ``Lasso`` fits one penalty per call (a multi-output fit
shares one alpha, ``lasso_path`` with several targets solves the multi-task problem), so a bisection
needing a different penalty per row runs row by row in Python; celer/skglm are per row as well. The
measured comparison (docs/reference implicit-models.md section 8) found plain batched FISTA too slow
to identify supports on these ill-conditioned Gram matrices. This solver combines, for all rows at
once, the three ingredients that are robust there:

* **working sets**: each round computes every row's gradient ``q = c - G w`` with one GEMM, keeps
  the row's support plus its worst violators of ``|q_j| <= lam`` (a per-row working set, padded to a
  common size), and gathers the per-row sub-Gram matrices;
* **coordinate descent** on the working sets, vectorised over rows (one Python loop over the
  working-set positions, each step an ``O(rows x k)`` update), which identifies supports quickly;
* a **Newton step on the support** (feature-sign search, Lee et al. NIPS 2007): with the support
  and signs fixed the LASSO is a linear system ``G_SS w_S = c_S - lam s_S``; one batched Cholesky
  solves all rows, and a line search stops at the first sign change, so the objective never
  increases. Once the support is right this step is exact, which is what makes the final supports
  exact zeros and the objectives match scikit-learn to rounding.

A row stops (and is no longer touched) when its duality gap is at most ``tol * ||z_r||^2``, so every
row's result is independent of the other rows in its batch except through the padded sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.validation import check_int, check_range


@dataclass(frozen=True)
class LassoSettings:
    """Stopping rule and effort of ``solve_lasso``.

    Attributes:
        tol: a row is solved when its duality gap is at most ``tol * ||z||^2``.
        max_rounds: rounds of (gradient, working set, CD sweeps, Newton steps) per solve.
        sweeps_per_round: coordinate-descent sweeps over the working set per round.
        working_set: smallest working-set size (it grows with the support).
        newton: take Newton (feature-sign) steps on the support after the sweeps.
        newton_iterations: Newton steps per round at most (each blocked step drops a coefficient).
        active_set_iterations: primal-dual active-set steps tried before the CD rounds (0: none).
    """

    tol: float = 1e-9
    max_rounds: int = 100
    sweeps_per_round: int = 8
    working_set: int = 32
    newton: bool = True
    newton_iterations: int = 16
    active_set_iterations: int = 8

    def validate(self, prefix: str) -> None:
        check_range(f"{prefix}tol", self.tol, 0.0, 1.0, low_inclusive=False)
        check_int(f"{prefix}max_rounds", self.max_rounds, 1)
        check_int(f"{prefix}sweeps_per_round", self.sweeps_per_round, 1)
        check_int(f"{prefix}working_set", self.working_set, 1)
        check_int(f"{prefix}newton_iterations", self.newton_iterations, 1)
        check_int(f"{prefix}active_set_iterations", self.active_set_iterations, 0)


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
        return self.correlations.abs().amax(dim=1)

    def gradient(self, weights: torch.Tensor) -> torch.Tensor:
        """``q = c - G w = M^T (z - M w)`` for every row."""
        return self.correlations - weights @ self.gram

    def loss(self, weights: torch.Tensor) -> torch.Tensor:
        """``1/2 ||M w - z||^2`` per row (from the statistics)."""
        fit = (weights @ self.gram * weights).sum(dim=1)
        return (0.5 * self.target_sq_norms - (self.correlations * weights).sum(dim=1) + 0.5 * fit).clamp_min(0)


@dataclass
class LassoSolution:
    """Result of ``solve_lasso`` (per row).

    Attributes:
        weights: the solutions (rows x d), exact zeros off the support.
        gap: final duality gap.
        converged: the gap met the tolerance.
        sweeps: coordinate-descent sweeps spent on the row.
        newton_steps: Newton steps taken on the row.
        rounds: rounds the batch took.
    """

    weights: torch.Tensor
    gap: torch.Tensor
    converged: torch.Tensor
    sweeps: torch.Tensor
    newton_steps: torch.Tensor
    rounds: int


def lasso_objective(problem: LassoProblem, weights: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``1/2 ||M w - z||^2 + lam ||w||_1`` per row."""
    return problem.loss(weights) + lam * weights.abs().sum(dim=1)


def duality_gap(problem: LassoProblem, weights: torch.Tensor, gradient: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Primal minus dual objective with the dual point ``theta = r * min(1, lam / ||M^T r||_inf)``.

    With ``r = z - M w``: ``||r||^2 = ||z||^2 - c'w - q'w`` and ``r'z = ||z||^2 - c'w``, so the gap
    needs only the statistics and ``q = M^T r``.
    """
    cw = (problem.correlations * weights).sum(dim=1)
    qw = (gradient * weights).sum(dim=1)
    residual_sq = (problem.target_sq_norms - cw - qw).clamp_min(0)
    primal = 0.5 * residual_sq + lam * weights.abs().sum(dim=1)
    largest = gradient.abs().amax(dim=1)
    scale = torch.where(largest > lam, lam / largest.clamp_min(torch.finfo(largest.dtype).tiny), torch.ones_like(largest))
    dual = scale * (problem.target_sq_norms - cw) - 0.5 * scale * scale * residual_sq
    return (primal - dual).clamp_min(0)


def gather_square(gram: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per row r, ``gram[index[r]][:, index[r]]`` (rows x k x k); ``gram`` shared (d x d) or per row (rows x K x K)."""
    if gram.dim() == 2:
        return gram[index[:, :, None], index[:, None, :]]
    rows, k = index.shape
    picked = gram.gather(1, index[:, :, None].expand(rows, k, gram.shape[2]))
    return picked.gather(2, index[:, None, :].expand(rows, k, k))


class SupportSystem:
    """The Gram matrix restricted to each row's support, Cholesky-factorised in one batch.

    ``gram`` is the shared ``G`` (d x d) with ``support`` and ``signs`` over the d columns (rows x d),
    or per-row working-set matrices (rows x k x k) with them in working-set coordinates (rows x k). Supports of
    different sizes are padded to the largest: padded positions carry an identity block and a zero
    right-hand side, so they solve to zero. ``ok`` is False for a row whose restricted matrix is not
    numerically positive definite (collinear support columns).
    """

    def __init__(self, gram: torch.Tensor, support: torch.Tensor, signs: torch.Tensor) -> None:
        size = int(support.sum(dim=1).max()) if support.numel() else 0
        self.size = size
        # Stable sort puts each row's support first, in increasing column order.
        self.index = torch.argsort((~support).to(torch.int8), dim=1, stable=True)[:, :size]
        self.valid = support.gather(1, self.index)
        self.signs = torch.where(self.valid, signs.gather(1, self.index), torch.zeros((), dtype=signs.dtype, device=signs.device))
        both = self.valid[:, :, None] & self.valid[:, None, :]
        eye = torch.eye(size, dtype=gram.dtype, device=gram.device)
        self.matrix = torch.where(both, gather_square(gram, self.index), eye)
        factor, info = torch.linalg.cholesky_ex(self.matrix)
        failed = info != 0
        if bool(failed.any()):
            # Collinear support columns (a rank-deficient design): a relative jitter of 1e-10 gives
            # those rows a usable (slightly regularised) Newton direction; only they are perturbed.
            scale = self.matrix.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(torch.finfo(gram.dtype).tiny)
            jitter = 1e-10 * scale[failed, None, None] * eye
            retry, retry_info = torch.linalg.cholesky_ex(self.matrix[failed] + jitter)
            factor[failed] = retry
            info[failed] = retry_info
        self.factor = factor
        self.ok = info == 0

    @classmethod
    def from_weights(cls, gram: torch.Tensor, weights: torch.Tensor) -> SupportSystem:
        """The system on the nonzeros of ``weights`` with their signs."""
        return cls(gram, weights != 0, torch.sign(weights))

    def gather(self, full: torch.Tensor) -> torch.Tensor:
        """``full`` (rows x d) at each row's support positions, zero on padding."""
        return torch.where(self.valid, full.gather(1, self.index), torch.zeros_like(self.signs))

    def scatter(self, values: torch.Tensor, rows: int, features: int) -> torch.Tensor:
        """Support values back into a (rows x d) matrix with zeros elsewhere."""
        full = values.new_zeros(rows, features)
        return full.scatter(1, self.index, torch.where(self.valid, values, torch.zeros_like(values)))

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``G_SS^{-1} rhs`` per row for support-shaped ``rhs`` (zero on padding and on failed rows)."""
        if self.size == 0:
            return rhs
        masked = torch.where(self.valid, rhs, torch.zeros_like(rhs))[:, :, None]
        half = torch.linalg.solve_triangular(self.factor, masked, upper=False)
        solution = torch.linalg.solve_triangular(self.factor.mT, half, upper=True)[:, :, 0]
        keep = self.valid & self.ok[:, None] & torch.isfinite(solution)
        return torch.where(keep, solution, torch.zeros_like(solution))

    def quadratic(self, values: torch.Tensor) -> torch.Tensor:
        """``v' G_SS v`` per row for support-shaped ``v``."""
        return (values[:, None, :] @ self.matrix @ values[:, :, None])[:, 0, 0]


def solve_lasso(
    problem: LassoProblem,
    lam: torch.Tensor,
    init: torch.Tensor | None = None,
    settings: LassoSettings = LassoSettings(),
) -> LassoSolution:
    """Solve every row's penalised LASSO (penalty ``lam[r]``) from ``init`` (zeros by default).

    First up to ``active_set_iterations`` primal-dual active-set steps (fast near a warm start),
    then, for the rows they leave unsolved, rounds of working-set CD and feature-sign steps.
    """
    rows, d = problem.rows, problem.features
    dtype, device = problem.gram.dtype, problem.gram.device
    lam = lam.to(dtype=dtype, device=device)
    weights = torch.zeros(rows, d, dtype=dtype, device=device) if init is None else init.to(dtype=dtype, device=device).clone()
    result = LassoSolution(
        weights=weights,
        gap=torch.full((rows,), float("inf"), dtype=dtype, device=device),
        converged=torch.zeros(rows, dtype=torch.bool, device=device),
        sweeps=torch.zeros(rows, dtype=torch.long, device=device),
        newton_steps=torch.zeros(rows, dtype=torch.long, device=device),
        rounds=0,
    )
    tolerance = settings.tol * problem.target_sq_norms
    active = _active_set_phase(problem, lam, tolerance, settings.active_set_iterations, result)
    inverse_diagonal = _safe_inverse(problem.gram.diagonal())
    for rounds in range(1, settings.max_rounds + 1):
        if active.numel() == 0:
            break
        result.rounds = rounds
        sub = problem.select(active)
        w = weights[active]
        gradient = sub.gradient(w)
        result.gap[active] = duality_gap(sub, w, gradient, lam[active])
        done = result.gap[active] <= tolerance[active]
        result.converged[active] = done
        active, w, gradient = active[~done], w[~done], gradient[~done]
        if active.numel() == 0:
            break
        w, spent = _working_set_round(problem.select(active), w, gradient, lam[active], inverse_diagonal, settings)
        result.sweeps[active] += spent
        result.newton_steps[active] += int(settings.newton)
        weights[active] = w
    else:
        sub = problem.select(active)
        w = weights[active]
        result.gap[active] = duality_gap(sub, w, sub.gradient(w), lam[active])
        result.converged[active] = result.gap[active] <= tolerance[active]
    return result


def _active_set_phase(
    problem: LassoProblem, lam: torch.Tensor, tolerance: torch.Tensor, iterations: int, result: LassoSolution
) -> torch.Tensor:
    """Primal-dual active-set iterations (Fan, Jiao & Lu 2014) on all rows; returns the unsolved rows.

    With ``q = c - G w`` and ``z = q + diag(G) w`` (the value coordinate descent would threshold),
    the active set is ``{j : |z_j| > lam}`` with signs ``sign(z_j)``; the next iterate solves the
    optimality conditions on it exactly, ``w_A = G_AA^{-1}(c_A - lam s_A)``, and is zero elsewhere.
    A fixed point of this map satisfies the KKT conditions exactly, and from a warm start (the
    previous penalty of a bisection) it is typically reached in a few steps. It is not monotone,
    so each row keeps its best iterate by objective and hands it to the CD rounds if unsolved.
    """
    weights = result.weights
    rows = torch.arange(problem.rows, device=weights.device)
    best = weights.clone()
    best_objective = torch.full((problem.rows,), float("inf"), dtype=weights.dtype, device=weights.device)
    diagonal = problem.gram.diagonal()
    for iteration in range(iterations + 1):
        sub = problem.select(rows)
        w = weights[rows]
        gradient = sub.gradient(w)
        gap = duality_gap(sub, w, gradient, lam[rows])
        objective = _objective_from_gradient(sub, w, gradient, lam[rows])
        better = objective < best_objective[rows]
        best[rows] = torch.where(better[:, None], w, best[rows])
        best_objective[rows] = torch.where(better, objective, best_objective[rows])
        done = gap <= tolerance[rows]
        result.gap[rows[done]] = gap[done]
        result.converged[rows[done]] = True
        rows, w, gradient = rows[~done], w[~done], gradient[~done]
        if rows.numel() == 0 or iteration == iterations:
            break
        pre_threshold = gradient + diagonal * w
        support = (pre_threshold.abs() > lam[rows, None]) & (diagonal > 0)
        signs = torch.sign(pre_threshold)
        system = SupportSystem(problem.gram, support, signs)
        values = system.solve(system.gather(problem.correlations[rows]) - lam[rows, None] * system.signs)
        weights[rows] = system.scatter(values, rows.numel(), problem.features)
        result.newton_steps[rows] += 1
    weights[rows] = best[rows]
    return rows


def _objective_from_gradient(problem: LassoProblem, weights: torch.Tensor, gradient: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``1/2 ||z - M w||^2 + lam ||w||_1`` from ``q = c - G w`` (``||r||^2 = ||z||^2 - c'w - q'w``)."""
    cw = (problem.correlations * weights).sum(dim=1)
    qw = (gradient * weights).sum(dim=1)
    return 0.5 * (problem.target_sq_norms - cw - qw).clamp_min(0) + lam * weights.abs().sum(dim=1)


def _safe_inverse(diagonal: torch.Tensor) -> torch.Tensor:
    """``1 / G_jj``, with 0 for an all-zero column (its coefficient must stay zero)."""
    return torch.where(diagonal > 0, 1.0 / diagonal.clamp_min(torch.finfo(diagonal.dtype).tiny), torch.zeros_like(diagonal))


def _working_set_round(
    problem: LassoProblem,
    weights: torch.Tensor,
    gradient: torch.Tensor,
    lam: torch.Tensor,
    inverse_diagonal: torch.Tensor,
    settings: LassoSettings,
) -> tuple[torch.Tensor, int]:
    """One round on each row's support plus its worst KKT violators: CD sweeps, then a Newton step.

    Returns the new weights and the number of sweeps.
    """
    d = problem.features
    support = weights != 0
    support_size = int(support.sum(dim=1).max())
    violators = int((gradient.abs() > lam[:, None]).sum(dim=1).max())
    size = min(d, max(settings.working_set, support_size + min(violators, max(settings.working_set, support_size))))
    # Support first (infinite score), then violators by how far |q_j| exceeds lam; sorted columns
    # make the gather below read the Gram matrix in order.
    tiny = torch.finfo(lam.dtype).tiny
    score = torch.where(support, torch.full_like(gradient, float("inf")), gradient.abs() / lam.clamp_min(tiny)[:, None])
    index = score.topk(size, dim=1).indices.sort(dim=1).values
    sub_gram = gather_square(problem.gram, index)
    local_w = weights.gather(1, index)
    local_q = gradient.gather(1, index)
    local_inv = inverse_diagonal[index]
    diagonal = problem.gram.diagonal()[index]
    sweeps = _coordinate_descent(sub_gram, local_w, local_q, diagonal, local_inv, lam, settings.sweeps_per_round,
                                 1e-12 * problem.target_sq_norms.sqrt())
    if settings.newton:
        local_w = _feature_sign(sub_gram, local_w, problem.correlations.gather(1, index), lam, settings.newton_iterations)
    return weights.scatter(1, index, local_w), sweeps


def _coordinate_descent(
    gram: torch.Tensor,
    weights: torch.Tensor,
    gradient: torch.Tensor,
    diagonal: torch.Tensor,
    inverse_diagonal: torch.Tensor,
    lam: torch.Tensor,
    max_sweeps: int,
    change_tolerance: torch.Tensor,
) -> int:
    """Cyclic CD in place on per-row (rows x k x k) problems, all rows at once; returns the sweeps.

    ``gradient`` is kept equal to ``c - G w`` (restricted to the working set) by rank-one updates.
    """
    size = weights.shape[1]
    low, high = -lam, lam
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        before = weights.clone()
        for t in range(size):
            current = weights[:, t]
            z = torch.addcmul(gradient[:, t], diagonal[:, t], current)
            # soft(z, lam) = z - clamp(z, -lam, lam)
            new = (z - torch.clamp(z, low, high)) * inverse_diagonal[:, t]
            delta = new - current
            weights[:, t] = new
            gradient.addcmul_(delta[:, None], gram[:, t, :], value=-1.0)
        change = ((weights - before).abs() * diagonal.sqrt()).amax(dim=1)
        if bool((change <= change_tolerance).all()):
            break
    return sweeps


def _feature_sign(
    gram: torch.Tensor, weights: torch.Tensor, correlations: torch.Tensor, lam: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Repeat the Newton step while it is blocked by a sign change (each blocked step drops a coefficient).

    A row whose step went all the way has the exact minimiser on its support and stops; the next
    round's CD adds the coefficients that the optimality conditions still ask for.
    """
    rows = torch.arange(weights.shape[0], device=weights.device)
    for _ in range(iterations):
        stepped, blocked = _newton_step(gram, weights[rows], correlations, lam)
        weights[rows] = stepped
        if bool(blocked.all()):
            continue
        if not bool(blocked.any()):
            break
        # Only the blocked rows go on; shrinking the operands once per iteration keeps copies small.
        rows, gram, correlations, lam = rows[blocked], gram[blocked], correlations[blocked], lam[blocked]
    return weights


def _newton_step(
    gram: torch.Tensor, weights: torch.Tensor, correlations: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature-sign step: towards ``G_SS^{-1}(c_S - lam s_S)``, stopping at the first sign change.

    ``gram`` holds per-row working-set matrices (rows x k x k) and ``weights``, ``correlations``
    are in working-set coordinates. On the orthant face of the current signs the objective is the
    quadratic ``1/2 w'Gw - (c - lam s)'w``, minimised by the Newton point; moving towards it stays
    on the face up to the first coefficient reaching zero, so the objective decreases along the
    way. The step is kept only for rows where it does not increase the objective (a guard against
    rounding on nearly singular supports).
    """
    rows, k = weights.shape
    if rows == 0 or not bool((weights != 0).any()):
        return weights, torch.zeros(rows, dtype=torch.bool, device=weights.device)
    system = SupportSystem.from_weights(gram, weights)
    current = system.gather(weights)
    signs = system.signs
    linear = system.gather(correlations)
    target = system.solve(linear - lam[:, None] * signs)
    crosses = system.valid & (signs * target < 0)
    denominator = torch.where(crosses, current - target, torch.ones_like(current))
    fraction = torch.where(crosses, current / denominator, torch.ones_like(current))
    step = fraction.amin(dim=1).clamp(0.0, 1.0)
    step = torch.where(system.ok, step, torch.zeros_like(step))
    moved = current + step[:, None] * (target - current)
    # The coefficients that reached zero become exact zeros (the line search stops on them).
    moved = torch.where(crosses & (fraction <= step[:, None]), torch.zeros_like(moved), moved)

    def restricted_objective(values: torch.Tensor) -> torch.Tensor:
        return 0.5 * system.quadratic(values) - (linear * values).sum(dim=1) + lam * values.abs().sum(dim=1)

    better = restricted_objective(moved) <= restricted_objective(current)
    blocked = better & (step < 1.0)
    return torch.where(better[:, None], system.scatter(moved, rows, k), weights), blocked
