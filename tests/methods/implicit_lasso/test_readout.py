"""Refitting the read-out by least squares or a penalised LASSO."""

from __future__ import annotations

import numpy as np
import torch

from consparse.lasso.statistics import GramAccumulator
from consparse.methods.implicit_lasso.readout import ReadoutSettings, fit_readout


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
