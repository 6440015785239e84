"""The constrained LASSO by a search on the path, against a scikit-learn bisection."""

from __future__ import annotations

import pytest
import torch
from tests.lasso.reference import sklearn_constrained_lasso

from consparse.lasso.path import LassoPath
from consparse.lasso.search import PathSearch, SearchSettings, constrained_lasso

PROBLEMS = [
    pytest.param({"samples": 120, "features": 40, "rows": 6, "seed": 0}, id="tall"),
    pytest.param({"samples": 30, "features": 60, "rows": 5, "seed": 1}, id="wide"),
    pytest.param({"samples": 80, "features": 30, "rows": 5, "seed": 2, "collinear": True}, id="collinear"),
]


@pytest.mark.parametrize("shape", PROBLEMS)
def test_constrained_rows_match_a_scikit_learn_bisection(make_problem, shape) -> None:
    _, _, problem = make_problem(**shape)
    radius = 0.5 * float(problem.lambda_max().min()) / float(problem.gram.diagonal().max())
    reference = sklearn_constrained_lasso(problem, radius, eps=1e-5, tol=1e-12)
    # The baseline keeps a feasible solution (an earlier version kept one that the next solve overwrote).
    assert float(reference.weights.abs().sum(dim=1).max()) <= radius
    solution = constrained_lasso(LassoPath(problem), radius)
    ours, theirs = solution.loss, problem.loss(reference.weights)
    assert torch.all(ours <= theirs * (1 + 1e-4) + 1e-12)
    assert float(solution.norm.max()) <= radius + 1e-6
    assert bool(solution.active.all()) and bool(solution.on_sphere.all())
    torch.testing.assert_close(solution.norm, torch.full_like(solution.norm, radius), rtol=1e-9, atol=0)


@pytest.mark.parametrize("step", ["path", "newton", "bisect"])
def test_every_search_reaches_the_radius_when_the_constraint_is_active(make_problem, step: str) -> None:
    _, _, problem = make_problem(100, 30, 6, seed=3)
    radius = 0.3
    solution = constrained_lasso(LassoPath(problem), radius, SearchSettings(step=step))
    assert bool(solution.active.all())
    torch.testing.assert_close(solution.norm, torch.full_like(solution.norm, radius), rtol=1e-9, atol=0)
    # Without the polish the bisection keeps the feasible end of its bracket, within eps.
    plain = constrained_lasso(LassoPath(problem), radius, SearchSettings(step=step, polish=False, eps=1e-3))
    assert bool((plain.norm <= radius * (1 + 1e-12)).all())
    assert bool((plain.norm >= radius * (1 - 1e-3)).all())
    assert torch.all(plain.loss >= solution.loss * (1 - 1e-12))


def test_an_inactive_constraint_keeps_the_floor_solution(make_problem) -> None:
    _, _, problem = make_problem(100, 20, 4, seed=4)
    search = SearchSettings(step="path", lambda_min_ratio=1e-6)
    solution = constrained_lasso(LassoPath(problem), 1e6, search)
    assert not bool(solution.active.any())
    torch.testing.assert_close(solution.lam, 1e-6 * problem.lambda_max())
    least_squares = torch.linalg.solve(problem.gram, problem.correlations.T).T
    torch.testing.assert_close(solution.weights, least_squares, rtol=0, atol=1e-4)


def test_a_part_only_constraint_counts_the_masked_coordinates(make_problem) -> None:
    _, _, problem = make_problem(100, 20, 4, seed=5)
    mask = torch.arange(20) < 8
    solution = PathSearch(problem, SearchSettings(), mask).solve(0.2)
    part = solution.weights[:, :8].abs().sum(dim=1)
    torch.testing.assert_close(part, torch.full_like(part, 0.2), rtol=1e-9, atol=0)
    torch.testing.assert_close(solution.norm, part)
    assert float(solution.weights.abs().sum(dim=1).min()) > 0.2


def test_warm_starts_save_knots_along_the_bisection_and_across_radii(make_problem) -> None:
    _, _, problem = make_problem(150, 60, 8, seed=6)
    warm = constrained_lasso(LassoPath(problem), 0.5, SearchSettings(step="bisect"))
    cold = constrained_lasso(LassoPath(problem), 0.5, SearchSettings(step="bisect", warm_start=False))
    assert int(warm.steps.sum()) == int(cold.steps.sum())
    assert int(warm.knots.sum()) < 0.7 * int(cold.knots.sum())
    torch.testing.assert_close(warm.weights, cold.weights, rtol=1e-8, atol=1e-10)
    # A second radius from the first one's solutions (the outer density search).
    solver = PathSearch(problem)
    solver.solve(0.5)
    again = solver.solve(0.4)
    fresh = PathSearch(problem).solve(0.4)
    assert int(again.knots.sum()) < int(fresh.knots.sum())
    torch.testing.assert_close(again.weights, fresh.weights, rtol=1e-8, atol=1e-10)


def test_bad_radii_and_steps_are_refused(make_problem) -> None:
    _, _, problem = make_problem(30, 5, 2, seed=7)
    with pytest.raises(ValueError, match="positive"):
        constrained_lasso(LassoPath(problem), 0.0)
    with pytest.raises(ValueError, match="active_set"):
        constrained_lasso(LassoPath(problem), 0.2, SearchSettings(step="active_set"))
