"""The one solution type: its norm is read from the weights, its status from the penalty."""

from __future__ import annotations

import torch

from consparse.lasso.solution import ConstrainedLassoSolution


def test_assess_reads_the_norm_from_the_weights_and_counts_only_the_mask(make_problem) -> None:
    _, _, problem = make_problem(30, 4, 2, seed=0)
    weights = torch.tensor([[0.5, -0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    radius = torch.tensor([1.0, 1.0], dtype=torch.float64)
    lam = problem.lambda_max() * torch.tensor([0.5, 1.0], dtype=torch.float64)
    floor = 1e-4 * problem.lambda_max()
    whole = ConstrainedLassoSolution.assess(problem, weights, lam, radius, floor)
    torch.testing.assert_close(whole.norm, torch.tensor([2.0, 0.0], dtype=torch.float64))
    assert not bool(whole.on_sphere[0]) and bool(whole.active.all())
    part = ConstrainedLassoSolution.assess(problem, weights, lam, radius, floor, torch.tensor([True, True, False, False]))
    assert bool(part.on_sphere[0]) and float(part.norm[0]) == 1.0
    assert int(part.steps.sum()) == 0 and not bool(part.fallback.any())
    both = ConstrainedLassoSolution.concatenate([whole, part])
    assert both.weights.shape == (4, 4) and both.to("cpu").norm.shape == (4,)
