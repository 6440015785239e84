"""Where each row's next knot is: closed-form distances along the current piece of its path.

On a piece, ``w_S(lam') = offset - lam' direction`` and the tracked correlations are
``q(lam') = q + (lam' - lam) slope``; a row moves down (``sigma = -1``) or up the path, by a
distance ``|lam' - lam|``. Each function returns, per row, the distance to one kind of knot.
"""

from __future__ import annotations

import torch

from consparse.lasso.problem import VIOLATION

# Relative size (of lam) under which a knot counts as "here": it is handled without moving.
IMMEDIATE = 1e-12


def join_distances(
    q: torch.Tensor, slope: torch.Tensor, lam: torch.Tensor, sigma: torch.Tensor, candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance at which each candidate's ``|q_j|`` reaches ``lam'``, and the sign it joins with.

    ``h = +-q_j - lam <= 0`` changes at rate ``sigma (+-slope_j - 1)``; a candidate already past
    ``lam`` (beyond ``VIOLATION``) joins at distance 0. Non-candidates: infinity.
    """
    tiny = torch.finfo(q.dtype).tiny
    distance_best = torch.full(q.shape, float("inf"), dtype=q.dtype, device=q.device)
    sign_best = torch.ones(q.shape, dtype=q.dtype, device=q.device)
    for sign in (1.0, -1.0):
        h = sign * q - lam[:, None]
        rate = sigma[:, None] * (sign * slope - 1.0)
        distance = torch.where(rate > 0, (-h).clamp_min(0) / rate.clamp_min(tiny), float("inf"))
        distance = torch.where(h > VIOLATION * lam[:, None], 0.0, distance)
        better = distance < distance_best
        distance_best = torch.where(better, distance, distance_best)
        sign_best = torch.where(better, sign, sign_best)
    return torch.where(candidates, distance_best, float("inf")), sign_best


def drop_distances(signs: torch.Tensor, weights: torch.Tensor, direction: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Distance at which each support coefficient reaches zero: ``s_k w_k >= 0`` falls at rate ``sigma s_k u_k``.

    A coefficient already of the wrong sign leaves at distance 0.
    """
    tiny = torch.finfo(weights.dtype).tiny
    signed = signs * weights
    rate = sigma[:, None] * signs * direction
    distance = torch.where(rate > 0, signed.clamp_min(0) / rate.clamp_min(tiny), float("inf"))
    return torch.where(signed < 0, 0.0, distance)


def radius_distance(
    counted: torch.Tensor, weights: torch.Tensor, direction: torch.Tensor, sigma: torch.Tensor, radius: torch.Tensor
) -> torch.Tensor:
    """Distance at which ``||w_K||_1`` (affine on the piece) reaches ``radius`` (inf: never, or no radius).

    ``counted`` is ``s_k`` on the support coordinates the radius counts and 0 elsewhere.
    """
    norm = (counted * weights).sum(dim=1)
    rate = -sigma * (counted * direction).sum(dim=1)  # d norm / d distance
    gap = radius - norm
    bounded = torch.isfinite(radius)
    inf = torch.full_like(norm, float("inf"))
    distance = torch.where(bounded & (rate != 0) & (gap * rate >= 0), gap / torch.where(rate != 0, rate, 1.0), inf)
    return torch.where(bounded & (gap == 0), 0.0, distance)


def screening_horizon(
    slack: torch.Tensor, moved: torch.Tensor, spent: torch.Tensor, column_norms: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """The furthest distance before an untracked coordinate could reach ``+-lam`` (``consparse.lasso.screening``)."""
    bound = column_norms[None, :]
    left = slack - moved[:, None] - bound * spent[:, None]
    return (left.clamp_min(0) / (1.0 + bound * gamma[:, None])).amin(dim=1)
