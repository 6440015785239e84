"""Least squares on each row's LASSO support."""

from __future__ import annotations

import torch

from consparse.lasso.debias import debias_rows
from consparse.lasso.path import solve_lasso


def test_debiasing_refits_the_free_support_by_least_squares(make_problem) -> None:
    design, targets, problem = make_problem(100, 12, 3, seed=11)
    weights, _ = solve_lasso(problem, 0.3 * problem.lambda_max())
    free = torch.arange(12) >= 4
    debiased = debias_rows(problem, weights, free, ridge=0.0)
    assert torch.equal(debiased != 0, weights != 0)  # same support, so the same density
    assert torch.equal(debiased[:, :4], weights[:, :4])  # the constrained part is kept
    assert torch.all(problem.loss(debiased) <= problem.loss(weights))
    for row in range(3):
        support = (weights[row] != 0) & free
        kept = torch.where(free, 0.0, weights[row])
        expected = torch.linalg.lstsq(design[:, support], targets[row] - design @ kept).solution
        torch.testing.assert_close(debiased[row, support], expected, rtol=1e-8, atol=1e-10)
