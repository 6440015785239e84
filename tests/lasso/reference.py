"""Row-by-row reference solver built on scikit-learn: the baseline of tests and benchmarks.

Each row's constrained LASSO ``min 1/2 ||M w - z||^2 s.t. ||w||_1 <= kappa`` is solved the way the
implicit-sparsification paper describes it and the way one would with a standard library: a
bisection on the penalty of scikit-learn's coordinate descent (``enet_path`` with the precomputed
Gram matrix, warm-started from the previous penalty), one row at a time.

scikit-learn needs a design and targets only for their sizes and ``||z||^2`` when the Gram matrix
and ``M^T z`` are given, so a stand-in of ``d + 1`` zero samples carries them. Its objective is
``1/(2 n) ||z - M w||^2 + alpha ||w||_1`` with ``n`` the stand-in's sample count, hence
``alpha = lam / n``; its duality-gap tolerance is relative to ``||z||^2`` like ours.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, enet_path

from consparse.lasso.problem import LassoProblem


@dataclass
class ReferenceSolution:
    """Per-row results of ``sklearn_constrained_lasso``: weights, penalties and penalised solves."""

    weights: torch.Tensor
    lam: torch.Tensor
    steps: torch.Tensor


def sklearn_lasso_row(
    problem: LassoProblem, row: int, lam: float, init: np.ndarray | None = None, tol: float = 1e-10, max_iter: int = 100_000
) -> np.ndarray:
    """One row's penalised LASSO at penalty ``lam`` by scikit-learn coordinate descent (Gram precomputed)."""
    gram = problem.gram.detach().cpu().double().numpy()
    d = gram.shape[0]
    samples = d + 1
    standin = np.zeros((samples, d))
    targets = np.zeros(samples)
    targets[0] = math.sqrt(float(problem.target_sq_norms[row]))
    correlations = problem.correlations[row].detach().cpu().double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, coefs, _ = enet_path(
            standin, targets, l1_ratio=1.0, alphas=[lam / samples], precompute=gram, Xy=correlations,
            coef_init=init, tol=tol, max_iter=max_iter, check_input=False,
        )
    return coefs[:, 0]


def sklearn_lasso(design: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor, tol: float = 1e-12) -> torch.Tensor:
    """Every row's penalised LASSO at its penalty ``lam[r]`` by scikit-learn on the design itself (rows x d).

    scikit-learn's objective is ``1/(2 m) ||z - M w||^2 + alpha ||w||_1`` for m samples: ``alpha = lam / m``.
    """
    samples = design.shape[0]
    weights = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for row in range(targets.shape[0]):
            fitted = Lasso(alpha=float(lam[row]) / samples, fit_intercept=False, tol=tol, max_iter=100_000)
            fitted.fit(design.detach().cpu().double().numpy(), targets[row].detach().cpu().double().numpy())
            weights.append(torch.from_numpy(fitted.coef_.copy()))
    return torch.stack(weights).to(design)


def sklearn_constrained_lasso(
    problem: LassoProblem,
    radius: float,
    eps: float = 1e-3,
    tol: float = 1e-10,
    max_steps: int = 60,
    lambda_min_ratio: float = 1e-4,
    rows: list[int] | None = None,
) -> ReferenceSolution:
    """Bisection on each row's penalty (geometric midpoints, warm starts) until ``||w||_1`` is within
    ``eps * radius`` of the radius on the feasible side, or the penalty floor is feasible.
    """
    chosen = list(range(problem.rows)) if rows is None else rows
    d = problem.features
    weights = np.zeros((len(chosen), d))
    lams = np.zeros(len(chosen))
    steps = np.zeros(len(chosen), dtype=np.int64)
    lam_max = problem.lambda_max().detach().cpu().double().numpy()
    for position, row in enumerate(chosen):
        if lam_max[row] <= 0:
            continue
        floor = lambda_min_ratio * lam_max[row]
        lo, hi = 0.0, float(lam_max[row])
        best = np.zeros(d)
        lam = 0.5 * hi
        current = None
        for step in range(1, max_steps + 1):
            # enet_path may update coef_init in place: the solution kept as ``best`` must not be the next init.
            current = sklearn_lasso_row(problem, row, lam, None if current is None else current.copy(), tol)
            steps[position] = step
            norm = float(np.abs(current).sum())
            if norm <= radius:
                hi, best = lam, current
                if radius - norm <= eps * radius or lam <= floor * (1 + 1e-12):
                    break
            else:
                lo = lam
            lam = math.sqrt(lo * hi) if lo > 0 else max(floor, 0.5 * hi)
        weights[position], lams[position] = best, hi
    return ReferenceSolution(torch.from_numpy(weights), torch.from_numpy(lams), torch.from_numpy(steps))
