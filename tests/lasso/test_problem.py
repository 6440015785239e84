"""The LASSO problem's statistics, objective and optimality check."""

from __future__ import annotations

import torch

from consparse.lasso.problem import LassoProblem, kkt_violation, lasso_objective, ridge_delta


def test_loss_and_gradient_match_the_design(make_problem) -> None:
    design, targets, problem = make_problem(40, 6, 3, seed=0)
    weights = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    residual = targets - weights @ design.T
    torch.testing.assert_close(problem.loss(weights), 0.5 * (residual * residual).sum(dim=1))
    torch.testing.assert_close(problem.gradient(weights), residual @ design)
    lam = torch.full((3,), 0.7, dtype=torch.float64)
    torch.testing.assert_close(lasso_objective(problem, weights, lam), problem.loss(weights) + 0.7 * weights.abs().sum(dim=1))


def test_zero_is_optimal_exactly_from_lambda_max(make_problem) -> None:
    _, _, problem = make_problem(40, 6, 3, seed=2)
    zeros = torch.zeros(3, 6, dtype=torch.float64)
    lam_max = problem.lambda_max()
    assert float(kkt_violation(problem, zeros, lam_max).max()) == 0.0
    assert bool((kkt_violation(problem, zeros, 0.5 * lam_max) > 0.9).all())  # |q_j| = 2 lam for the largest


def test_rows_must_match_the_design() -> None:
    gram = torch.eye(3)
    try:
        LassoProblem(gram, torch.zeros(2, 4), torch.zeros(2))
    except ValueError as error:
        assert "do not match" in str(error)
    else:
        raise AssertionError("a mismatched problem was accepted")
    assert ridge_delta(torch.diag(torch.tensor([2.0, 0.0, 4.0])), 0.5) == 1.5
    assert ridge_delta(torch.zeros(2, 2), 0.5) == 0.0
