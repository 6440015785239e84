"""The batched exact LASSO path against scikit-learn, on generic and on degenerate designs."""

from __future__ import annotations

import pytest
import torch
from tests.lasso.reference import sklearn_lasso

from consparse.lasso.path import LassoPath, PathSettings, solve_lasso
from consparse.lasso.problem import kkt_violation, lasso_objective

PROBLEMS = [
    pytest.param({"samples": 120, "features": 40, "rows": 6, "seed": 0}, id="tall"),
    pytest.param({"samples": 30, "features": 60, "rows": 5, "seed": 1}, id="wide"),
    pytest.param({"samples": 80, "features": 30, "rows": 5, "seed": 2, "collinear": True}, id="collinear"),
]


def _assert_optimal(design, targets, problem, weights, lam, stats) -> None:
    ours = lasso_objective(problem, weights, lam)
    theirs = lasso_objective(problem, sklearn_lasso(design, targets, lam), lam)
    assert torch.all(ours <= theirs * (1 + 1e-7) + 1e-12)
    assert float(kkt_violation(problem, weights, lam).max()) < 1e-6
    assert not bool(stats.exhausted.any())


@pytest.mark.parametrize("shape", PROBLEMS)
@pytest.mark.parametrize("ratio", [0.3, 0.02])
def test_penalised_solutions_match_scikit_learn(make_problem, shape, ratio: float) -> None:
    design, targets, problem = make_problem(**shape)
    lam = ratio * problem.lambda_max()
    weights, stats = solve_lasso(problem, lam)
    _assert_optimal(design, targets, problem, weights, lam, stats)
    # Exact zeros off the support: every zero coefficient has |q_j| <= lam.
    assert bool((weights == 0).any())


@pytest.mark.parametrize("ridge", [1e-10, 0.0])
@pytest.mark.parametrize("shape", [(60, 20, 8), (15, 20, 6)], ids=["tall", "wide"])
@pytest.mark.parametrize("ratio", [0.5, 0.05, 0.005])
def test_dependent_columns_keep_the_path_exact(make_degenerate, shape, ratio: float, ridge: float) -> None:
    design, targets, problem = make_degenerate(*shape, seed=0)
    lam = ratio * problem.lambda_max()
    weights, stats = solve_lasso(problem, lam, PathSettings(ridge=ridge))
    _assert_optimal(design, targets, problem, weights, lam, stats)
    # The zero column never enters; of exact duplicates at most one does.
    assert bool((weights[:, 7] == 0).all())
    assert bool((((weights[:, 0] != 0).int() + (weights[:, 1] != 0).int() + (weights[:, 9] != 0).int()) <= 1).all())


def test_a_path_moves_down_and_back_up_exactly(make_problem) -> None:
    _, _, problem = make_problem(80, 25, 5, seed=7)
    path = LassoPath(problem)
    rows = torch.arange(problem.rows)
    low = 0.05 * problem.lambda_max()
    path.move(rows, low)
    first = path.weights()
    path.move(rows, 0.5 * problem.lambda_max())
    path.move(rows, low)
    torch.testing.assert_close(path.weights(), first, rtol=0, atol=1e-12)
    path.move(rows, problem.lambda_max())
    assert bool((path.weights() == 0).all())


def test_a_degenerate_path_moves_down_and_back_up(make_degenerate) -> None:
    design, targets, problem = make_degenerate(40, 20, 6, seed=3)
    path = LassoPath(problem)
    rows = torch.arange(problem.rows)
    for ratio in (0.01, 0.4, 0.002, 0.1):
        lam = ratio * problem.lambda_max()
        stats = path.move(rows, lam)
        _assert_optimal(design, targets, problem, path.weights(), lam, stats)
        norm, _ = path.norms()
        torch.testing.assert_close(norm, path.weights().abs().sum(dim=1), rtol=1e-12, atol=1e-12)
