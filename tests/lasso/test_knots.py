"""Closed-form distances to the next knot."""

from __future__ import annotations

import torch

from consparse.lasso.knots import drop_distances, join_distances, radius_distance

DOWN = torch.tensor([-1.0], dtype=torch.float64)


def test_join_distances_follow_the_affine_correlations() -> None:
    lam = torch.tensor([1.0], dtype=torch.float64)
    q = torch.tensor([[0.5, -0.8, 1.5, 0.9]], dtype=torch.float64)
    slope = torch.tensor([[0.5, 0.0, 0.0, 3.0]], dtype=torch.float64)
    candidates = torch.tensor([[True, True, True, False]])
    distance, sign = join_distances(q, slope, lam, DOWN, candidates)
    # Down by t: q_0 = 0.5 - 0.5 t meets 1 - t at t = 1; -q_1 = 0.8 meets it at t = 0.2; q_2 is already past.
    torch.testing.assert_close(distance, torch.tensor([[1.0, 0.2, 0.0, float("inf")]], dtype=torch.float64))
    assert sign[0, :3].tolist() == [1.0, -1.0, 1.0]


def test_drop_and_radius_distances() -> None:
    signs = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    weights = torch.tensor([[0.4, -0.2]], dtype=torch.float64)
    direction = torch.tensor([[0.0, -0.1]], dtype=torch.float64)
    # Moving up (sigma = +1), w = offset - lam u: w_1 = -0.2 + 0.1 t reaches zero at t = 2.
    up = torch.tensor([1.0], dtype=torch.float64)
    torch.testing.assert_close(drop_distances(signs, weights, direction, up), torch.tensor([[float("inf"), 2.0]], dtype=torch.float64))
    # ||w||_1 = 0.6 - 0.1 t reaches 0.5 at t = 1; without a radius, never.
    radius = torch.tensor([0.5], dtype=torch.float64)
    torch.testing.assert_close(radius_distance(signs, weights, direction, up, radius), torch.tensor([1.0], dtype=torch.float64))
    assert float(radius_distance(signs, weights, direction, up, torch.tensor([float("inf")], dtype=torch.float64))) == float("inf")
