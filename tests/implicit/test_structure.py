"""The support graph of A: nilpotency / DAG detection, levels, dropped states."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from consparse.implicit.convert import sequential_to_matrices
from consparse.implicit.structure import is_acyclic, plan_states


def _converted(hidden: tuple[int, ...] = (6, 5, 4)):
    torch.manual_seed(0)
    sizes = (7, *hidden)
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(sizes[-1], 3)).double()
    return sequential_to_matrices(net, 0.9)


def _random_dag(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A strictly lower-triangular A with random support, seen through a random permutation of the states."""
    generator = torch.Generator().manual_seed(seed)
    lower = torch.tril(torch.rand(n, n, generator=generator, dtype=torch.float64), diagonal=-1)
    lower *= torch.rand(n, n, generator=generator, dtype=torch.float64) < 0.3
    permutation = torch.randperm(n, generator=generator)
    return lower[permutation][:, permutation], permutation


def test_a_converted_network_is_acyclic_with_one_level_per_hidden_layer() -> None:
    converted = _converted()
    assert is_acyclic(converted.A)
    plan = plan_states(converted.A, converted.B, converted.C, bias_column=converted.B.shape[1] - 1)
    assert plan.acyclic and plan.cyclic == [False, False, False]
    assert plan.levels == [list(range(s.start, s.stop)) for s in converted.layer_slices]
    assert plan.zero_states == [] and plan.unobserved_states == []


def test_a_random_dag_under_a_permutation_is_detected_and_levels_follow_its_edges() -> None:
    n = 30
    A, _ = _random_dag(n, seed=1)
    assert is_acyclic(A)
    B = torch.ones(n, 4, dtype=torch.float64)
    C = torch.ones(2, n, dtype=torch.float64)
    plan = plan_states(A, B, C, bias_column=None)
    assert plan.acyclic and sorted(plan.order) == list(range(n))
    level_of = {state: index for index, level in enumerate(plan.levels) for state in level}
    for i, j in torch.nonzero(A).tolist():
        assert level_of[j] < level_of[i]  # state j feeds state i: it is known one level earlier at least
    # Every state of a level past the first has a predecessor in the level just before (longest path).
    for index, level in enumerate(plan.levels[1:], start=1):
        for state in level:
            assert any(level_of[j] == index - 1 for j in torch.nonzero(A[state]).flatten().tolist())


def test_a_cycle_or_a_self_loop_is_not_acyclic_and_needs_a_fixed_point() -> None:
    n = 6
    A = torch.zeros(n, n, dtype=torch.float64)
    A[1, 0] = A[2, 1] = A[3, 2] = 0.3  # a chain 0 -> 1 -> 2 -> 3
    A[1, 2] = 0.2  # 2 -> 1 closes the cycle {1, 2}
    A[5, 3] = 0.4  # 3 -> 5
    B = torch.ones(n, 3, dtype=torch.float64)
    C = torch.zeros(2, n, dtype=torch.float64)
    C[:, 5] = 1.0
    C[:, 4] = 1.0
    assert not is_acyclic(A)
    plan = plan_states(A, B, C, bias_column=None)
    assert not plan.acyclic
    cyclic_states = {s for level, cyclic in zip(plan.levels, plan.cyclic) if cyclic for s in level}
    assert {1, 2} <= cyclic_states and 5 not in cyclic_states
    assert plan.describe()["cyclic_states"] == len(cyclic_states)
    self_loop = torch.zeros(2, 2, dtype=torch.float64)
    self_loop[0, 0] = 0.5
    assert not is_acyclic(self_loop)
    assert plan_states(self_loop, torch.ones(2, 1), torch.ones(1, 2), None).cyclic == [True]


def test_zero_and_unobserved_states_are_dropped() -> None:
    n = 5
    A = torch.zeros(n, n, dtype=torch.float64)
    A[1, 0] = 0.5  # 0 (no input, negative bias: always 0) -> 1
    A[2, 3] = 0.5  # 3 feeds 2, which the output reads
    B = torch.zeros(n, 3, dtype=torch.float64)  # two input columns and the bias column
    B[0, 2] = -1.0
    B[1, 2] = -0.5
    B[2, 0] = B[3, 1] = B[4, 0] = 1.0
    C = torch.zeros(2, n, dtype=torch.float64)
    C[0, 1] = C[0, 2] = 1.0  # 4 is read by nobody
    plan = plan_states(A, B, C, bias_column=2)
    assert plan.zero_states == [0, 1]
    assert plan.unobserved_states == [4]
    assert plan.levels == [[3], [2]]
    # A positive bias makes a state live.
    B[0, 2] = 1.0
    assert plan_states(A, B, C, bias_column=2).zero_states == []
