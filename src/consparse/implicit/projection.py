"""Exact Euclidean projection of every row of a matrix onto an L1 ball (the well-posedness set).

The set ``{A : ||A||_inf <= kappa}`` (max over rows of the row's L1 norm) is a product of row-wise
L1 balls, so its Euclidean projection is the L1-ball projection of each row. The public implicit-model
code either loops over rows in NumPy or rescales the whole matrix (which is not a projection and gives
no zeros); this is the sort-based algorithm of Duchi et al. (ICML 2008), batched over rows so that it
runs as a handful of tensor operations on the CPU or a GPU.
"""

from __future__ import annotations

import torch


def project_rows_l1(weights: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """Project each row of ``weights`` onto the L1 ball of ``radius`` (a number or one value per row).

    Rows already inside their ball are returned unchanged (bit for bit); the others become
    ``sign(w) * max(|w| - theta, 0)`` with the row's threshold ``theta`` chosen so that the L1 norm
    equals the radius, which sets the smallest entries to exact zeros. A 1-D tensor is one row.

    Args:
        weights: ``(rows, d)`` or ``(d,)``.
        radius: non-negative; a number, or a tensor of ``rows`` radii.

    Returns:
        A new tensor shaped like ``weights``.
    """
    if weights.dim() not in (1, 2):
        raise ValueError(f"project_rows_l1 expects a vector or a matrix, got shape {tuple(weights.shape)}")
    rows = weights.reshape(1, -1) if weights.dim() == 1 else weights
    radii = torch.as_tensor(radius, dtype=rows.dtype, device=rows.device).reshape(-1, 1)
    if radii.numel() not in (1, rows.shape[0]):
        raise ValueError(f"radius has {radii.numel()} values for {rows.shape[0]} rows")
    if bool((radii < 0).any()):
        raise ValueError("the radius of an L1 ball must be non-negative")
    radii = radii.expand(rows.shape[0], 1)
    magnitudes = rows.abs()
    inside = magnitudes.sum(dim=1, keepdim=True) <= radii
    if bool(inside.all()):
        return weights.clone()
    # Duchi et al.: with u sorted descending, rho = max{j : u_j > (sum_{i<=j} u_i - r) / j}.
    ordered = magnitudes.sort(dim=1, descending=True).values
    excess = ordered.cumsum(dim=1) - radii
    positions = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    support = ordered * positions > excess
    rho = (support * positions).amax(dim=1, keepdim=True).clamp_min(1)
    theta = excess.gather(1, rho.long() - 1) / rho
    projected = torch.sign(rows) * (magnitudes - theta).clamp_min(0)
    # A zero radius leaves nothing; the formula above gives that too except for rounding of theta.
    projected = torch.where(radii > 0, projected, torch.zeros_like(projected))
    result = torch.where(inside, rows, projected)
    return result.reshape(weights.shape)


def row_l1_norms(weights: torch.Tensor) -> torch.Tensor:
    """L1 norm of every row (``||W||_inf`` is their maximum)."""
    return weights.abs().sum(dim=-1)
