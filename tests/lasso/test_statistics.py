"""Gram statistics streamed in batches."""

from __future__ import annotations

import torch

from consparse.lasso.statistics import GramAccumulator


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
