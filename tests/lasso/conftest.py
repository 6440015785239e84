"""Small random problems for the implicit wing's tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from consparse.lasso.path import LassoProblem


def random_problem(
    samples: int, features: int, rows: int, seed: int = 0, collinear: bool = False, noise: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, LassoProblem]:
    """A design ``M`` (samples x features), targets ``Z`` (rows x samples) and their LASSO statistics.

    The targets are sparse combinations of the columns plus noise; ``collinear`` adds a nearly
    duplicated column and a dead (all-zero) one, as ReLU states produce.
    """
    generator = torch.Generator().manual_seed(seed)
    design = torch.randn(samples, features, generator=generator, dtype=torch.float64)
    if collinear:
        design[:, 1] = design[:, 0] + 1e-3 * torch.randn(samples, generator=generator, dtype=torch.float64)
        design[:, 2] = 0.0
    truth = torch.randn(rows, features, generator=generator, dtype=torch.float64)
    truth = truth * (torch.rand(rows, features, generator=generator) < 0.3)
    targets = truth @ design.T + noise * torch.randn(rows, samples, generator=generator, dtype=torch.float64)
    problem = LassoProblem(design.T @ design, targets @ design, (targets * targets).sum(dim=1))
    return design, targets, problem


@pytest.fixture
def make_problem() -> Callable[..., tuple[torch.Tensor, torch.Tensor, LassoProblem]]:
    """``design, targets, problem = make_problem(samples, features, rows, seed=..., collinear=...)``."""
    return random_problem
