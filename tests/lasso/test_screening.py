"""Screening changes the work of a move, never its solutions."""

from __future__ import annotations

import torch

from consparse.lasso.path import LassoPath, PathSettings
from consparse.lasso.problem import kkt_violation, lasso_objective


def _both(problem, lam: torch.Tensor) -> tuple[LassoPath, LassoPath]:
    rows = torch.arange(problem.rows)
    screened = LassoPath(problem, PathSettings(screen=4))
    full = LassoPath(problem, PathSettings(screen=0))
    screened.move(rows, lam)
    full.move(rows, lam)
    assert screened.screen_refreshes > 0 and full.screen_refreshes == 0
    return screened, full


def test_screened_and_full_paths_agree(make_problem) -> None:
    _, _, problem = make_problem(100, 80, 6, seed=4)
    screened, full = _both(problem, 0.01 * problem.lambda_max())
    torch.testing.assert_close(screened.weights(), full.weights(), rtol=1e-9, atol=1e-10)


def test_screened_and_full_paths_reach_the_same_optimum_on_dependent_columns(make_degenerate) -> None:
    # Which of two duplicated columns carries the weight depends on the order of the ties: both are optima.
    _, _, problem = make_degenerate(50, 60, 6, seed=5)
    lam = 0.01 * problem.lambda_max()
    screened, full = _both(problem, lam)
    objectives = [lasso_objective(problem, path.weights(), lam) for path in (screened, full)]
    torch.testing.assert_close(objectives[0], objectives[1], rtol=1e-10, atol=0)
    assert float(kkt_violation(problem, screened.weights(), lam).max()) < 1e-6
