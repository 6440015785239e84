"""Sparsifiable weights, densities, parameter and MAC counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.compress.count import (
    count_macs,
    count_macs_breakdown,
    count_params,
    density,
    flop_profile,
    model_stats,
    nonzero_count,
    numel_count,
    per_layer_density,
    sparsifiable_layers,
    sparsifiable_weights,
)
from consparse.compress.prune import magnitude_prune
from consparse.models.mlp import MLP


class TwoMatrices(nn.Module):
    """Stands in for the implicit model: owns A and B, uses them functionally, counts its own MACs."""

    def __init__(self, features: int = 6) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(features, features))
        self.B = nn.Parameter(torch.randn(features, features))
        self.hidden_linear = nn.Linear(features, features)  # not sparsifiable: the owner says so

    def sparsifiable_weights(self) -> dict[str, torch.Tensor]:
        return {"A": self.A, "B": self.B}

    def macs_per_sample(self) -> int:
        return 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_linear(x @ self.A.T @ self.B.T)


def set_weight(layer: nn.Module, values: list) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(values, dtype=torch.float32).reshape(layer.weight.shape))


def test_mlp_sparsifiable_weights_are_linear_weights_in_module_order(small_mlp: MLP) -> None:
    weights = sparsifiable_weights(small_mlp)
    assert list(weights) == ["layers.1.weight", "layers.3.weight", "layers.5.weight"]
    assert weights["layers.1.weight"] is small_mlp.layers[1].weight


def test_every_conv_is_sparsifiable_but_not_batchnorm() -> None:
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Conv2d(3, 4, 1), nn.Conv3d(4, 5, 1), nn.Linear(5, 2)
    )
    assert list(sparsifiable_weights(model)) == ["0.weight", "2.weight", "3.weight", "4.weight"]


def test_module_with_its_own_sparsifiable_weights_speaks_for_its_subtree() -> None:
    model = nn.Sequential(nn.Linear(6, 6), TwoMatrices(), nn.Linear(6, 2))
    weights = sparsifiable_weights(model)
    assert list(weights) == ["0.weight", "1.A", "1.B", "2.weight"]
    assert weights["1.A"] is model[1].A
    assert [name for name, _ in sparsifiable_layers(model)] == ["0", "2"]
    assert list(sparsifiable_weights(TwoMatrices())) == ["A", "B"]  # at the root: no prefix


def test_shared_layer_is_counted_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert list(sparsifiable_weights(model)) == ["0.weight"]


def test_counts_on_handmade_tensors() -> None:
    tensors = {"a": torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "b": torch.tensor([0.0, 0.0, -3.0])}
    assert nonzero_count(tensors) == 3
    assert numel_count(tensors) == 7
    assert nonzero_count(list(tensors.values())) == 3


def test_density_and_per_layer_density_are_exact() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    set_weight(model[0], [1, 0, 0, 2, 0, 0, 3, 0, 0, 4, 0, 5])  # 5 of 12
    set_weight(model[2], [0, 6, 0, 0, 0, 7])  # 2 of 6
    assert density(model, model) == pytest.approx(7 / 18, abs=0)
    assert per_layer_density(model) == {"0.weight": 5 / 12, "2.weight": 2 / 6}


def test_density_of_a_purged_model_is_against_the_reference() -> None:
    reference = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    purged = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))  # one hidden neuron removed
    set_weight(purged[0], [1, 0, 1, 1, 0, 1, 1, 1])  # 6 nonzeros
    assert density(purged, reference) == pytest.approx((6 + 4) / 18)
    assert per_layer_density(purged, reference) == {"0.weight": 6 / 12, "2.weight": 4 / 6}
    extra = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 2))
    assert per_layer_density(extra, reference)["3.weight"] == 1.0  # no counterpart: its own size


def test_count_params_all_and_nonzero() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    assert count_params(model) == 12 + 3 + 3 + 3 + 6
    with torch.no_grad():
        model[0].bias.zero_()
        model[1].bias.zero_()  # BN bias starts at zero anyway; weight starts at one
    assert count_params(model, nonzero_only=True) == 12 + 3 + 6


def test_mnist_mlp_macs_dense_and_pruned(mnist_mlp: MLP) -> None:
    # 784*300 + 300*100 + 100*10 weight MACs. FlopCounter counts Linear as aten.addmm whose formula is
    # the matmul's alone, so biases add no MACs (the L0 paper's 267,010 counts ptflops' bias adds).
    assert count_macs(mnist_mlp, [1, 28, 28], sparse=False) == 266_200
    assert count_macs(mnist_mlp, [1, 28, 28], sparse=True) == 266_200
    without_bias = MLP([1, 28, 28], 10, hidden=(300, 100), bias=False)
    assert count_macs(without_bias, [1, 28, 28]) == 266_200
    pruned = magnitude_prune(mnist_mlp, 0.9)
    # A Linear at batch 1 does one MAC per weight: the scaled count is the nonzero weight count.
    assert count_macs(pruned, [1, 28, 28]) == nonzero_count(sparsifiable_weights(pruned)) == 26_620
    assert count_macs(pruned, [1, 28, 28], sparse=False) == 266_200


def test_lenet_macs_match_hand_computation(lenet: nn.Sequential) -> None:
    conv1 = 20 * 24 * 24 * (1 * 5 * 5)  # out channels x output pixels x kernel volume
    conv2 = 50 * 8 * 8 * (20 * 5 * 5)
    fc = 800 * 500 + 500 * 10
    assert count_macs(lenet, [1, 28, 28]) == conv1 + conv2 + fc == 2_293_000
    with torch.no_grad():
        lenet[3].weight[:25].zero_()  # half of conv2's filters
    breakdown = count_macs_breakdown(lenet, [1, 28, 28])
    assert breakdown.per_module["3"] == conv2 // 2
    assert breakdown.total == conv1 + conv2 // 2 + fc


def test_a_layer_called_twice_is_counted_twice_and_scaled() -> None:
    shared = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        shared.weight[:, :3].zero_()  # 70 nonzeros
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_macs(model, [10], sparse=False) == 200
    assert count_macs(model, [10]) == 140


def test_module_with_macs_per_sample_replaces_its_subtree_count() -> None:
    model = nn.Sequential(nn.Linear(6, 6, bias=False), TwoMatrices(), nn.Linear(6, 2, bias=False))
    breakdown = count_macs_breakdown(model, [6])
    assert breakdown.per_module["1"] == 1000
    assert breakdown.total == 36 + 1000 + 12
    assert count_macs(TwoMatrices(), [6]) == 1000


def test_a_gated_layer_is_scaled_by_what_it_declares_sparsifiable() -> None:
    class GatedLinear(nn.Linear):
        """A Linear whose effective weight is its weight times a 0/1 gate per input."""

        def __init__(self) -> None:
            super().__init__(4, 3, bias=False)
            self.register_buffer("gate", torch.tensor([1.0, 0.0, 0.0, 1.0]))

        def sparsifiable_weights(self) -> dict[str, torch.Tensor]:
            return {"weight": self.weight * self.gate}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, self.weight * self.gate)

    model = nn.Sequential(GatedLinear())
    assert list(sparsifiable_weights(model)) == ["0.weight"]
    assert count_macs(model, [4]) == 6
    assert count_macs(model, [4], sparse=False) == 12


def test_flops_outside_layers_are_kept_unscaled() -> None:
    class MatmulHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4, bias=False)
            self.register_buffer("projection", torch.ones(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) @ self.projection

    model = MatmulHead()
    with torch.no_grad():
        model.fc.weight[:2].zero_()
    assert count_macs(model, [4]) == 8 + 12


def test_counting_leaves_the_model_untouched(lenet: nn.Sequential, watch) -> None:
    lenet.train()
    check = watch(lenet)
    count_macs(lenet, [1, 28, 28])
    check()


def test_model_stats_bundle(mnist_mlp: MLP) -> None:
    pruned = magnitude_prune(mnist_mlp, 0.5, scope="layer")
    stats = model_stats(pruned, [1, 28, 28], reference=mnist_mlp)
    biases = 300 + 100 + 10
    assert stats.density == pytest.approx(0.5)
    assert stats.per_layer_density == pytest.approx(
        {"layers.1.weight": 0.5, "layers.3.weight": 0.5, "layers.5.weight": 0.5}
    )
    assert stats.params == 133_100 + biases
    assert stats.params_total == stats.dense_params == 266_200 + biases
    assert stats.macs == 133_100
    assert stats.dense_macs == 266_200
    assert set(stats.as_dict()) == {
        "density",
        "per_layer_density",
        "params",
        "params_total",
        "macs",
        "dense_params",
        "dense_macs",
    }


def test_a_profile_of_the_unpruned_model_counts_its_pruned_copies_alike(lenet: nn.Sequential) -> None:
    profile = flop_profile(lenet, [1, 28, 28])
    for amount in (0.0, 0.5, 0.95):
        pruned = magnitude_prune(lenet, amount)
        assert count_macs_breakdown(pruned, [1, 28, 28], profile=profile) == count_macs_breakdown(pruned, [1, 28, 28])
    assert count_macs(lenet, [1, 28, 28], sparse=False, profile=profile) == count_macs(lenet, [1, 28, 28], sparse=False)


class _CountsItsLatestForward(TwoMatrices):
    """A self-counting module whose count depends on its latest forward pass, as the implicit model's does."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = 0

    def macs_per_sample(self) -> int:
        return 1000 * self.forwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return super().forward(x)


def test_a_profile_is_not_used_for_a_model_with_self_counting_modules() -> None:
    model = nn.Sequential(nn.Linear(6, 6, bias=False), _CountsItsLatestForward())
    profile = flop_profile(model, [6])
    # Counted on a fresh copy whose module ran once in the counter, as without a profile.
    assert count_macs(model, [6], profile=profile) == count_macs(model, [6]) == 36 + 1000
