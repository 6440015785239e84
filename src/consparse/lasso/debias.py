"""Least squares on each row's LASSO support (relaxed LASSO): an option beyond the paper.

The constrained LASSO both selects a support and shrinks its coefficients towards zero; at high
sparsity the shrinkage, not the missing coordinates, is most of the fitting error. Refitting the
coefficients of the *free* coordinates (those the radius is not needed for: the inputs ``U`` of an
implicit model's rows, whose size does not affect well-posedness, or every coordinate of a
layer-wise block) by least squares on the selected support, with the other coordinates fixed,
removes that shrinkage while keeping the support (so the density) and ``||A||_inf <= kappa``.
"""

from __future__ import annotations

import torch

from consparse.lasso.problem import LassoProblem


def debias_rows(problem: LassoProblem, weights: torch.Tensor, free: torch.Tensor | None = None, ridge: float = 1e-8) -> torch.Tensor:
    """``weights`` with each row's free support coordinates refitted by (ridge-stabilised) least squares.

    Args:
        problem: the rows' LASSO statistics.
        weights: the LASSO solutions (rows x d).
        free: boolean mask over the d coordinates that may be refitted (default: all).
        ridge: relative to the mean diagonal of the Gram matrix.
    """
    weights = weights.to(problem.gram)
    free_mask = torch.ones(problem.features, dtype=torch.bool, device=weights.device) if free is None else free.to(weights.device)
    refit = (weights != 0) & free_mask[None, :]
    width = int(refit.sum(dim=1).max()) if refit.numel() else 0
    if width == 0:
        return weights.clone()
    # Each row's refitted coordinates first (stable sort), padded to the widest row.
    index = torch.argsort((~refit).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = refit.gather(1, index)
    fixed = torch.where(refit, 0.0, weights)
    # Normal equations on the support: G_FF v = c_F - G_F,rest w_rest.
    rhs = problem.correlations.gather(1, index) - (fixed @ problem.gram).gather(1, index)
    both = valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(width, dtype=weights.dtype, device=weights.device)
    scale = float(problem.gram.diagonal().mean()) if problem.features else 1.0
    system = torch.where(both, problem.gram[index[:, :, None], index[:, None, :]] + ridge * scale * eye, eye)
    factor, info = torch.linalg.cholesky_ex(system)
    values = torch.cholesky_solve(torch.where(valid, rhs, 0.0)[:, :, None], factor)[:, :, 0]
    # A row whose support is numerically singular keeps its LASSO coefficients.
    values = torch.where(valid & (info == 0)[:, None], values, weights.gather(1, index))
    # Padded positions point at fixed coordinates: adding zero there leaves them as they are.
    return fixed.scatter_add(1, index, torch.where(valid, values, 0.0))
