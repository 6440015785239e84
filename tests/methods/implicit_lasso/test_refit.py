"""Rows solved in chunks by the configured solver; masked blocks on the path."""

from __future__ import annotations

import torch
from tests.lasso.conftest import random_problem

from consparse.lasso.path import LassoPath
from consparse.lasso.search import SearchSettings, constrained_lasso
from consparse.methods.implicit_lasso.refit import RowBlock, RowSolver


def test_row_chunks_give_the_same_rows_as_one_batch() -> None:
    _, _, problem = random_problem(90, 30, 10, seed=8)
    radii = [torch.full((10,), 0.4)]
    whole = RowSolver([RowBlock("x", problem)], row_batch=10).solve(radii)[0]
    chunked = RowSolver([RowBlock("x", problem)], row_batch=3).solve(radii)[0]
    assert chunked.weights.shape == whole.weights.shape
    torch.testing.assert_close(chunked.weights, whole.weights, rtol=1e-9, atol=1e-12)
    bisected = RowSolver([RowBlock("x", problem)], 4, SearchSettings(step="bisect")).solve(radii)[0]
    torch.testing.assert_close(bisected.loss, whole.loss, rtol=1e-9, atol=1e-12)


def test_masked_blocks_are_solved_on_the_path() -> None:
    _, _, problem = random_problem(100, 20, 4, seed=5)
    mask = torch.arange(20) < 8
    radii = [torch.full((4,), 0.2, dtype=torch.float64)]
    solution = RowSolver([RowBlock("x", problem, mask)], row_batch=4).solve(radii)[0]
    exact = constrained_lasso(LassoPath(problem, mask=mask), 0.2)
    torch.testing.assert_close(solution.weights, exact.weights, rtol=1e-9, atol=1e-12)
    assert not bool(solution.fallback.any())
