"""The support algebra: bordered joins, drops, and columns blocked while they are dependent."""

from __future__ import annotations

import torch

from consparse.lasso.path import LassoPath, PathSettings


def test_inverses_stay_the_inverse_of_the_support_gram(make_problem) -> None:
    _, _, problem = make_problem(60, 25, 4, seed=1)
    path = LassoPath(problem, PathSettings(screen=0))
    path.move(torch.arange(4), 0.02 * problem.lambda_max())
    for row in range(4):
        size = int(path.size[row])
        index = path.index[row, :size]
        gram = problem.gram[index][:, index] + path.delta * torch.eye(size, dtype=torch.float64)
        torch.testing.assert_close(path.inverse[row, :size, :size] @ gram, torch.eye(size, dtype=torch.float64), rtol=0, atol=1e-8)


def test_a_duplicated_column_is_blocked_not_joined(make_degenerate) -> None:
    _, _, problem = make_degenerate(60, 20, 8, seed=0)
    path = LassoPath(problem)
    path.move(torch.arange(8), 0.005 * problem.lambda_max())
    blocked = path.blocked.clone()
    assert bool(blocked.any())
    for row in range(8):
        support = set(path.index[row, : int(path.size[row])].tolist())
        assert not support & set(blocked[row].nonzero().flatten().tolist())
        assert len(support & {0, 1, 9}) <= 1 and len(support & {3, 4, 5}) <= 2
    # Back at lam_max every row's support is empty again and nothing stays blocked.
    path.move(torch.arange(8), problem.lambda_max())
    assert int(path.size.sum()) == 0 and not bool(path.blocked.any())
    path.reset(torch.arange(8))
    assert not bool(path.blocked.any())
