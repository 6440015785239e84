"""The solver registry, settings from one config block, and every solver on degenerate designs."""

from __future__ import annotations

import pytest
import torch
from tests.lasso.reference import sklearn_constrained_lasso, sklearn_lasso

from consparse.errors import ParameterError
from consparse.lasso.active_set import ActiveSet, ActiveSetSettings
from consparse.lasso.problem import lasso_objective
from consparse.lasso.search import PathSearch, SearchSettings
from consparse.lasso.solvers import SOLVERS, get_solver, make_solver, solver_settings


def test_every_step_name_has_a_solver() -> None:
    assert get_solver("active_set") is ActiveSet and get_solver("bisect") is PathSearch
    assert set(SOLVERS) == {"active_set", "path", "newton", "bisect"}
    with pytest.raises(KeyError, match="fista"):
        get_solver("fista")


def test_one_block_gives_one_settings_object_per_solver() -> None:
    # The block of conf/method/implicit_lasso.yaml carries every solver's keys.
    block = {"step": "active_set", "max_rounds": 7, "growth": 0.5, "row_group": 8, "eps": 1e-2, "max_steps": 60,
             "lambda_min_ratio": 1e-5, "warm_start": True, "polish": True, "ridge": 1e-9, "max_knots": 99}
    active = solver_settings(block)
    assert active == ActiveSetSettings(max_rounds=7, lambda_min_ratio=1e-5, ridge=1e-9, max_knots=99)
    assert active.fallback == SearchSettings(step="path", lambda_min_ratio=1e-5, ridge=1e-9, max_knots=99)
    bisect = solver_settings({**block, "step": "bisect"})
    assert bisect == SearchSettings(step="bisect", eps=1e-2, lambda_min_ratio=1e-5, ridge=1e-9, max_knots=99)
    assert bisect.path.max_knots == 99
    assert solver_settings(None) == ActiveSetSettings()


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ({"iterations": 3}, "iterations"),
        ({"step": "fista"}, "step"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"step": "newton", "eps": 2.0}, "eps"),
        ({"step": "path", "ridge": -1.0}, "ridge"),
    ],
)
def test_bad_blocks_name_the_key(block, key: str) -> None:
    with pytest.raises(ParameterError) as caught:
        solver_settings(block)
    assert caught.value.name == key


def test_a_masked_problem_goes_to_the_path_with_the_fallback_settings(make_problem) -> None:
    _, _, problem = make_problem(60, 10, 3, seed=1)
    mask = torch.arange(10) < 4
    settings = ActiveSetSettings(lambda_min_ratio=1e-5)
    solver = make_solver(settings, problem, mask)
    assert isinstance(solver, PathSearch) and solver.settings == settings.fallback
    assert isinstance(make_solver(settings, problem), ActiveSet)


SETTINGS = [
    pytest.param(ActiveSetSettings(), id="active_set"),
    pytest.param(ActiveSetSettings(ridge=0.0), id="active_set-no-ridge"),
    pytest.param(ActiveSetSettings(max_rounds=1), id="active_set-fallback"),
    pytest.param(SearchSettings(step="path"), id="path"),
    pytest.param(SearchSettings(step="path", ridge=0.0), id="path-no-ridge"),
    pytest.param(SearchSettings(step="newton"), id="newton"),
    pytest.param(SearchSettings(step="bisect"), id="bisect"),
    pytest.param(SearchSettings(step="bisect", polish=False), id="bisect-unpolished"),
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("shape", [(60, 20, 8), (15, 20, 6)], ids=["tall", "wide"])
def test_every_solver_is_exact_on_dependent_columns(make_degenerate, settings, shape) -> None:
    design, targets, problem = make_degenerate(*shape, seed=0)
    solver = make_solver(settings, problem)
    # Without the polish a bisection keeps the feasible end of its bracket: within eps of the sphere.
    tolerance = settings.eps if isinstance(settings, SearchSettings) and not settings.polish else 1e-9
    scale = float(problem.lambda_max().min()) / float(problem.gram.diagonal().max())
    for radius in (0.5 * scale, 5 * scale, 50 * scale):  # the density search's sequence of radii
        solution = solver.solve(radius)
        torch.testing.assert_close(solution.norm, solution.weights.abs().sum(dim=1), rtol=0, atol=0)
        assert float(solution.norm.max()) <= radius * (1 + 1e-9)
        # The path's ridge moves q_j by delta w_j: ~1e-6 of the floor penalty at the largest radius.
        assert float(solution.kkt.max()) < 1e-5
        assert not bool(solution.exhausted.any())
        assert bool(((solution.norm >= radius * (1 - tolerance)) | ~solution.active).all())
        # Optimal for the penalised problem at its own lam (scikit-learn), on the sphere: the constrained optimum.
        reference = sklearn_lasso(design, targets, solution.lam)
        ours, theirs = (lasso_objective(problem, weights, solution.lam) for weights in (solution.weights, reference))
        assert torch.all(ours <= theirs * (1 + 1e-7) + 1e-12)
    # And no worse than a scikit-learn bisection on the radius (feasible side, within its eps); an
    # unpolished bisection ends anywhere within eps too, so only the exact solvers are compared.
    if tolerance > 1e-9:
        return
    bisection = sklearn_constrained_lasso(problem, radius, eps=1e-4, tol=1e-10, rows=[0, 1])
    assert torch.all(solution.loss[:2] <= problem.select(slice(0, 2)).loss(bisection.weights) * (1 + 1e-6) + 1e-12)


def test_a_masked_path_is_exact_on_dependent_columns(make_degenerate) -> None:
    design, targets, problem = make_degenerate(60, 20, 8, seed=1)
    mask = torch.arange(20) < 12
    solver = make_solver(ActiveSetSettings(), problem, mask)
    for radius in (0.05, 0.5):
        solution = solver.solve(radius)
        torch.testing.assert_close(solution.norm, solution.weights[:, :12].abs().sum(dim=1), rtol=0, atol=0)
        assert float(solution.norm.max()) <= radius * (1 + 1e-9)
        assert float(solution.kkt.max()) < 1e-6
        reference = sklearn_lasso(design, targets, solution.lam)
        ours, theirs = (lasso_objective(problem, weights, solution.lam) for weights in (solution.weights, reference))
        assert torch.all(ours <= theirs * (1 + 1e-7) + 1e-12)
