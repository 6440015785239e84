"""Gate noise keyed by (run key, epoch, batch): reproducible, independent of torch's global stream."""

from __future__ import annotations

import copy

import torch

from consparse.gates import HardConcreteGate, batch_noise_seed, gate_model, seeded_gate_noise
from consparse.models.mlp import MLP


def _gated() -> torch.nn.Module:
    torch.manual_seed(0)
    model = MLP([1, 8, 8], 10, hidden=[16, 12])
    gate_model(model, structured=False, droprate_init=0.3)
    return model.train()


def _samples(model: torch.nn.Module) -> list[torch.Tensor]:
    model(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    return [gate.current.detach().clone() for gate in model.modules() if isinstance(gate, HardConcreteGate)]


def test_the_same_batch_key_draws_the_same_gates_in_any_process_state() -> None:
    model, twin = _gated(), _gated()
    seed = batch_noise_seed(5, 1, 7)
    with seeded_gate_noise(model, seed):
        first = _samples(model)
    torch.rand(1000)  # another process state: the global stream has moved on
    with seeded_gate_noise(twin, seed):
        second = _samples(twin)
    assert len(first) == 3
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    with seeded_gate_noise(model, batch_noise_seed(5, 1, 8)):
        other = _samples(model)
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_seeded_noise_leaves_the_global_stream_and_the_gates_as_they_were() -> None:
    model = _gated()
    state = torch.get_rng_state()
    with seeded_gate_noise(model, 3):
        assert all(gate.noise is not None for gate in model.modules() if isinstance(gate, HardConcreteGate))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(gate.noise is None for gate in model.modules() if isinstance(gate, HardConcreteGate))
    copy.deepcopy(model)  # the gates stay copyable (purge and fold copy the model)


def test_seeds_differ_for_each_coordinate_of_the_key() -> None:
    keys = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (2**62, 3, 4)]
    seeds = [batch_noise_seed(*key) for key in keys]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert batch_noise_seed(0, 1, 1) == batch_noise_seed(0, 1, 1)
