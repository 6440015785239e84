"""The batched active-set solver against the exact path and scikit-learn."""

from __future__ import annotations

import pytest
import torch
from tests.lasso.reference import sklearn_constrained_lasso

from consparse.lasso.active_set import ActiveSet, ActiveSetSettings
from consparse.lasso.path import LassoPath
from consparse.lasso.problem import LassoProblem
from consparse.lasso.search import SearchSettings, constrained_lasso

PROBLEMS = [
    pytest.param({"samples": 120, "features": 40, "rows": 6, "seed": 0}, id="tall"),
    pytest.param({"samples": 30, "features": 60, "rows": 5, "seed": 1}, id="wide"),
    pytest.param({"samples": 80, "features": 30, "rows": 5, "seed": 2, "collinear": True}, id="collinear"),
]


def _radius(problem: LassoProblem) -> float:
    """A radius at which every row's constraint binds."""
    return 0.5 * float(problem.lambda_max().min()) / float(problem.gram.diagonal().max())


@pytest.mark.parametrize("shape", PROBLEMS)
def test_the_active_set_finds_the_exact_constrained_optimum(make_problem, shape) -> None:
    _, _, problem = make_problem(**shape)
    radius = _radius(problem)
    exact = constrained_lasso(LassoPath(problem), radius)
    solution = ActiveSet(problem).solve(radius)
    torch.testing.assert_close(solution.loss, exact.loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(solution.lam, exact.lam, rtol=1e-6, atol=0)
    assert torch.equal(solution.weights != 0, exact.weights != 0)
    assert bool(solution.on_sphere.all()) and bool(solution.active.all())
    assert float(solution.kkt.max()) < 1e-6
    reference = sklearn_constrained_lasso(problem, radius, eps=1e-5, tol=1e-12)
    assert torch.all(solution.loss <= problem.loss(reference.weights) * (1 + 1e-4) + 1e-12)
    assert float(solution.norm.max()) <= radius + 1e-6


def test_the_active_set_keeps_the_floor_solution_of_an_inactive_constraint(make_problem) -> None:
    _, _, problem = make_problem(100, 20, 4, seed=4)
    solution = ActiveSet(problem, ActiveSetSettings(lambda_min_ratio=1e-6)).solve(1e6)
    exact = constrained_lasso(LassoPath(problem), 1e6, SearchSettings(lambda_min_ratio=1e-6))
    assert not bool(solution.active.any())
    torch.testing.assert_close(solution.lam, 1e-6 * problem.lambda_max())
    torch.testing.assert_close(solution.weights, exact.weights, rtol=1e-9, atol=1e-12)


def test_the_active_set_warm_starts_across_radii(make_problem) -> None:
    _, _, problem = make_problem(150, 60, 8, seed=6)
    solver = ActiveSet(problem)
    solver.solve(0.5)
    again = solver.solve(0.45)
    fresh = ActiveSet(problem).solve(0.45)
    assert int(again.steps.sum()) < int(fresh.steps.sum())
    torch.testing.assert_close(again.weights, fresh.weights, rtol=1e-9, atol=1e-12)
    cold = ActiveSet(problem, ActiveSetSettings(warm_start=False))
    cold.solve(0.5)
    assert int(cold.solve(0.45).steps.sum()) == int(fresh.steps.sum())


def test_growth_and_row_groups_change_the_work_not_the_solution(make_problem) -> None:
    _, _, problem = make_problem(300, 200, 8, seed=6)
    default = ActiveSet(problem).solve(20.0)
    slow = ActiveSet(problem, ActiveSetSettings(growth=0.01, row_group=1)).solve(20.0)
    assert int(slow.steps.sum()) > int(default.steps.sum())
    torch.testing.assert_close(slow.weights, default.weights, rtol=1e-9, atol=1e-12)


def test_unresolved_rows_fall_back_to_the_exact_path(make_problem) -> None:
    _, _, problem = make_problem(120, 40, 6, seed=12)
    radius = _radius(problem)
    solution = ActiveSet(problem, ActiveSetSettings(max_rounds=1)).solve(radius)
    exact = constrained_lasso(LassoPath(problem), radius)
    assert bool(solution.fallback.all()) and int(solution.knots.sum()) == int(exact.knots.sum())
    torch.testing.assert_close(solution.weights, exact.weights, rtol=1e-9, atol=1e-12)
    assert not bool(ActiveSet(problem).solve(radius).fallback.any())


def _near_rank_problem(seed: int = 0, samples: int = 40, features: int = 200) -> LassoProblem:
    """A wide design of correlated columns (ReLU states of one layer share a mean) and dense targets."""
    generator = torch.Generator().manual_seed(seed)
    design = torch.randn(samples, features, generator=generator, dtype=torch.float64)
    design = design + 0.9 * torch.randn(samples, 1, generator=generator, dtype=torch.float64)
    targets = torch.randn(8, samples, generator=generator, dtype=torch.float64)
    return LassoProblem(design.T @ design, targets @ design, (targets**2).sum(dim=1))


def test_a_row_that_cycles_near_the_designs_rank_is_damped_not_handed_to_the_path() -> None:
    problem = _near_rank_problem()
    undamped = ActiveSetSettings(stall_rounds=10**6, max_rounds=100)
    # Supports of 24-29 of the design's rank of 40: the undamped rounds of some rows cycle.
    radius = 2.0
    cycling = ActiveSet(problem, undamped).solve(radius)
    damped = ActiveSet(problem, ActiveSetSettings(max_rounds=100)).solve(radius)
    exact = constrained_lasso(LassoPath(problem), radius)
    assert bool(cycling.fallback.any())
    assert not bool(damped.fallback.any()) and int(damped.steps.sum()) < int(cycling.steps.sum())
    torch.testing.assert_close(damped.weights, exact.weights, rtol=1e-9, atol=1e-12)
    assert float(damped.kkt.max()) < 1e-6
    # Rows that converge on their own never stall, so the damping changes nothing for them.
    easy_undamped, easy = ActiveSet(problem, undamped).solve(0.5), ActiveSet(problem).solve(0.5)
    assert torch.equal(easy.steps, easy_undamped.steps) and torch.equal(easy.weights, easy_undamped.weights)


def test_a_row_with_a_zero_target_stays_zero(make_problem) -> None:
    _, _, problem = make_problem(60, 10, 3, seed=13)
    problem = LassoProblem(problem.gram, torch.cat([problem.correlations, torch.zeros(1, 10, dtype=torch.float64)]),
                           torch.cat([problem.target_sq_norms, torch.zeros(1, dtype=torch.float64)]))
    solution = ActiveSet(problem).solve(0.2)
    assert bool((solution.weights[-1] == 0).all()) and not bool(solution.active[-1])
    assert not bool(solution.fallback.any()) and bool(solution.on_sphere[:-1].all())


def test_the_active_set_refuses_a_mask(make_problem) -> None:
    _, _, problem = make_problem(30, 6, 2, seed=14)
    with pytest.raises(ValueError, match="masked block"):
        ActiveSet(problem, mask=torch.arange(6) < 3)
