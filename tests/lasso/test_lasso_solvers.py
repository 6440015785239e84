"""The batched LASSO path and the constrained search against scikit-learn and brute force."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from consparse.lasso.active_set import ActiveSet, ActiveSetSettings
from consparse.lasso.search import SearchSettings, constrained_lasso
from consparse.lasso.debias import debias_rows
from consparse.lasso.path import LassoPath, LassoProblem, kkt_violation, lasso_objective, solve_lasso
from consparse.methods.implicit_lasso.readout import ReadoutSettings, fit_readout
from tests.lasso.reference import sklearn_constrained_lasso
from consparse.methods.implicit_lasso.refit import RowBlock, RowSolver
from consparse.lasso.statistics import GramAccumulator

PROBLEMS = [
    pytest.param({"samples": 120, "features": 40, "rows": 6, "seed": 0}, id="tall"),
    pytest.param({"samples": 30, "features": 60, "rows": 5, "seed": 1}, id="wide"),
    pytest.param({"samples": 80, "features": 30, "rows": 5, "seed": 2, "collinear": True}, id="collinear"),
]


@pytest.mark.parametrize("shape", PROBLEMS)
@pytest.mark.parametrize("ratio", [0.3, 0.02])
def test_penalised_solutions_match_scikit_learn(make_problem, shape, ratio: float) -> None:
    design, targets, problem = make_problem(**shape)
    lam = ratio * problem.lambda_max()
    weights, stats = solve_lasso(problem, lam)
    ours = lasso_objective(problem, weights, lam)
    samples = design.shape[0]
    for row in range(problem.rows):
        fitted = Lasso(alpha=float(lam[row]) / samples, fit_intercept=False, tol=1e-14, max_iter=100_000)
        fitted.fit(design.numpy(), targets[row].numpy())
        reference = torch.from_numpy(fitted.coef_)[None]
        theirs = lasso_objective(problem.select(slice(row, row + 1)), reference, lam[row : row + 1])
        assert float(ours[row]) <= float(theirs[0]) * (1 + 1e-4)
    assert float(kkt_violation(problem, weights, lam).max()) < 1e-6
    assert not bool(stats.exhausted.any())
    # Exact zeros off the support: every zero coefficient has |q_j| <= lam.
    assert bool((weights == 0).any())


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
    path = LassoPath(problem, mask=mask)
    solution = constrained_lasso(path, 0.2)
    part = solution.weights[:, :8].abs().sum(dim=1)
    torch.testing.assert_close(part, torch.full_like(part, 0.2), rtol=1e-9, atol=0)
    assert float(solution.weights.abs().sum(dim=1).min()) > 0.2


def test_warm_starts_save_knots_along_the_bisection_and_across_radii(make_problem) -> None:
    _, _, problem = make_problem(150, 60, 8, seed=6)
    warm = constrained_lasso(LassoPath(problem), 0.5, SearchSettings(step="bisect"))
    cold = constrained_lasso(LassoPath(problem), 0.5, SearchSettings(step="bisect", warm_start=False))
    assert int(warm.steps.sum()) == int(cold.steps.sum())
    assert int(warm.knots.sum()) < 0.7 * int(cold.knots.sum())
    torch.testing.assert_close(warm.weights, cold.weights, rtol=1e-8, atol=1e-10)
    # A second radius from the first one's solutions (the outer density search).
    path = LassoPath(problem)
    constrained_lasso(path, 0.5)
    again = constrained_lasso(path, 0.4)
    fresh = constrained_lasso(LassoPath(problem), 0.4)
    assert int(again.knots.sum()) < int(fresh.knots.sum())
    torch.testing.assert_close(again.weights, fresh.weights, rtol=1e-8, atol=1e-10)


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


def test_row_chunks_give_the_same_rows_as_one_batch(make_problem) -> None:
    _, _, problem = make_problem(90, 30, 10, seed=8)
    whole = RowSolver([RowBlock("x", problem)], row_batch=10).solve([torch.full((10,), 0.4)], SearchSettings())[0]
    chunked = RowSolver([RowBlock("x", problem)], row_batch=3).solve([torch.full((10,), 0.4)], SearchSettings())[0]
    assert chunked.weights.shape == whole.weights.shape
    torch.testing.assert_close(chunked.weights, whole.weights, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- the active set
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
    search = SearchSettings(lambda_min_ratio=1e-6)
    solution = ActiveSet(problem).solve(1e6, search)
    exact = constrained_lasso(LassoPath(problem), 1e6, replace(search, step="path"))
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
    cold = solver.solve(0.45, SearchSettings(warm_start=False))
    assert int(cold.steps.sum()) == int(fresh.steps.sum())


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


def test_a_row_with_a_zero_target_stays_zero(make_problem) -> None:
    _, _, problem = make_problem(60, 10, 3, seed=13)
    problem = LassoProblem(problem.gram, torch.cat([problem.correlations, torch.zeros(1, 10, dtype=torch.float64)]),
                           torch.cat([problem.target_sq_norms, torch.zeros(1, dtype=torch.float64)]))
    solution = ActiveSet(problem).solve(0.2)
    assert bool((solution.weights[-1] == 0).all()) and not bool(solution.active[-1])
    assert not bool(solution.fallback.any()) and bool(solution.on_sphere[:-1].all())


def test_masked_blocks_are_solved_on_the_path(make_problem) -> None:
    _, _, problem = make_problem(100, 20, 4, seed=5)
    mask = torch.arange(20) < 8
    solution = RowSolver([RowBlock("x", problem, mask)], row_batch=4).solve([torch.full((4,), 0.2, dtype=torch.float64)], SearchSettings())[0]
    exact = constrained_lasso(LassoPath(problem, mask=mask), 0.2)
    torch.testing.assert_close(solution.weights, exact.weights, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="active_set"):
        constrained_lasso(LassoPath(problem), 0.2, SearchSettings(step="active_set"))


def test_gram_statistics_stream_in_batches(make_problem) -> None:
    design, targets, problem = make_problem(50, 7, 3, seed=9)
    accumulator = GramAccumulator(7, 3)
    for start in range(0, 50, 16):
        accumulator.add(design[start : start + 16], targets[:, start : start + 16].T)
    streamed = accumulator.problem()
    assert accumulator.samples == 50
    torch.testing.assert_close(streamed.gram, problem.gram)
    torch.testing.assert_close(streamed.correlations, problem.correlations)
    torch.testing.assert_close(streamed.target_sq_norms, problem.target_sq_norms)


def test_least_squares_readout_zeroes_dead_columns() -> None:
    generator = torch.Generator().manual_seed(10)
    design = torch.randn(60, 8, generator=generator, dtype=torch.float64)
    design[:, 5] = 0
    targets = torch.randn(3, 8, generator=generator, dtype=torch.float64) @ design.T
    accumulator = GramAccumulator(8, 3)
    accumulator.add(design, targets.T)
    weights = fit_readout(accumulator.problem(), ReadoutSettings(ridge=0.0))
    assert bool((weights[:, 5] == 0).all())
    np.testing.assert_allclose((weights @ design.T).numpy(), targets.numpy(), atol=1e-8)
    sparse = fit_readout(accumulator.problem(), ReadoutSettings(mode="lasso", lambda_ratio=0.5))
    assert int((sparse != 0).sum()) < int((weights != 0).sum())


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
