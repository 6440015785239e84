"""Small random problems for the constrained-LASSO tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from consparse.lasso.problem import LassoProblem


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
    return design, *_targets(design, rows, generator, noise)


def degenerate_problem(samples: int, features: int, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, LassoProblem]:
    """Like ``random_problem``, with exactly dependent columns: duplicated (1 = 0), negated (9 = -0),
    combinations (5 = 2 x3 - x4, 11 = x12 + x13 + x14) and a zero column (7). Needs ``features >= 15``.
    """
    generator = torch.Generator().manual_seed(seed)
    design = torch.randn(samples, features, generator=generator, dtype=torch.float64)
    design[:, 1] = design[:, 0]
    design[:, 9] = -design[:, 0]
    design[:, 5] = 2 * design[:, 3] - design[:, 4]
    design[:, 11] = design[:, 12] + design[:, 13] + design[:, 14]
    design[:, 7] = 0.0
    return design, *_targets(design, rows, generator, 0.3)


def _targets(design: torch.Tensor, rows: int, generator: torch.Generator, noise: float) -> tuple[torch.Tensor, LassoProblem]:
    samples, features = design.shape
    truth = torch.randn(rows, features, generator=generator, dtype=torch.float64)
    truth = truth * (torch.rand(rows, features, generator=generator) < 0.3)
    targets = truth @ design.T + noise * torch.randn(rows, samples, generator=generator, dtype=torch.float64)
    return targets, LassoProblem(design.T @ design, targets @ design, (targets * targets).sum(dim=1))


@pytest.fixture
def make_problem() -> Callable[..., tuple[torch.Tensor, torch.Tensor, LassoProblem]]:
    """``design, targets, problem = make_problem(samples, features, rows, seed=..., collinear=...)``."""
    return random_problem


@pytest.fixture
def make_degenerate() -> Callable[..., tuple[torch.Tensor, torch.Tensor, LassoProblem]]:
    """``design, targets, problem = make_degenerate(samples, features, rows, seed=...)``."""
    return degenerate_problem
