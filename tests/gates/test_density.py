"""Expected-density bookkeeping (per layer and for the model), test-gate density and the expected L2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.gates import (
    deterministic_gate_densities,
    expected_l2,
    expected_layer_densities,
    expected_model_density,
    gate_model,
    gated_layers,
    weight_counts,
)
from consparse.gates.hard_concrete import ACTIVE_SHIFT
from consparse.models.lenet import LeNet5
from consparse.models.mlp import MLP


def _set_log_alpha(model: nn.Module, values: list[float]) -> None:
    with torch.no_grad():
        for (_, layer), value in zip(gated_layers(model), values):
            layer.gate.log_alpha.fill_(value)


def test_layer_density_is_the_mean_probability_and_model_density_weights_by_layer_size() -> None:
    model = MLP([1, 4, 4], 3, hidden=[5])  # gated: Linear(16->5) (80 weights), Linear(5->3) (15 weights)
    gate_model(model)
    with torch.no_grad():
        first, second = (layer for _, layer in gated_layers(model))
        first.gate.log_alpha.copy_(torch.linspace(-3, 3, 16))
        second.gate.log_alpha.copy_(torch.tensor([-5.0, 0.0, 1.0, 2.0, 5.0]))
    p1 = torch.sigmoid(torch.linspace(-3, 3, 16) + ACTIVE_SHIFT)
    p2 = torch.sigmoid(torch.tensor([-5.0, 0.0, 1.0, 2.0, 5.0]) + ACTIVE_SHIFT)
    # Input-neuron gates: each gate of layer 1 carries 5 weights, each of layer 2 carries 3.
    rho = torch.stack([p1.sum() * 5 / 80, p2.sum() * 3 / 15])
    torch.testing.assert_close(expected_layer_densities(model), rho)
    torch.testing.assert_close(expected_model_density(model), (p1.sum() * 5 + p2.sum() * 3) / 95)
    assert weight_counts(model) == {"layers.1": 80, "layers.3": 15}


def test_conv_channel_gates_count_whole_filters() -> None:
    model = LeNet5([1, 28, 28], 10)
    gate_model(model)
    _set_log_alpha(model, [10.0, -10.0, 10.0, 10.0])
    densities = expected_layer_densities(model).detach()
    assert densities[0] == pytest.approx(1.0, abs=1e-3) and densities[1] == pytest.approx(0.0, abs=1e-3)
    counts = weight_counts(model)
    assert counts == {"layers.0": 500, "layers.3": 25000, "layers.7": 400000, "layers.9": 5000}
    assert float(expected_model_density(model)) == pytest.approx(405500 / 430500, abs=1e-3)


def test_densities_are_differentiable_in_the_gates_only() -> None:
    model = MLP([1, 4, 4], 3, hidden=[5])
    gate_model(model)
    expected_model_density(model).backward()
    for _, layer in gated_layers(model):
        assert layer.gate.log_alpha.grad is not None and float(layer.gate.log_alpha.grad.abs().sum()) > 0
        assert layer.weight.grad is None


def test_test_gate_density_counts_gates_above_the_threshold() -> None:
    model = MLP([1, 4, 4], 3, hidden=[5])
    gate_model(model)
    with torch.no_grad():
        first, second = (layer for _, layer in gated_layers(model))
        first.gate.log_alpha.copy_(torch.tensor([-2.0] * 4 + [-1.0] * 12))  # 4 off (below -1.5986), 12 on
        second.gate.log_alpha.fill_(-3.0)
    densities = deterministic_gate_densities(model)
    assert densities["layers.1"] == pytest.approx(12 / 16)
    assert densities["layers.3"] == 0.0
    assert densities["model"] == pytest.approx(12 * 5 / 95)


def test_expected_l2_weights_gated_weights_by_detached_probabilities() -> None:
    model = MLP([1, 4, 4], 3, hidden=[5])
    gate_model(model)
    _set_log_alpha(model, [0.0, 2.0])
    first, second = (layer for _, layer in gated_layers(model))
    q1, q2 = torch.sigmoid(torch.tensor(ACTIVE_SHIFT)), torch.sigmoid(torch.tensor(2.0 + ACTIVE_SHIFT))
    expected = (q1 * first.weight.pow(2).sum() + first.bias.pow(2).sum()
                + q2 * second.weight.pow(2).sum() + second.bias.pow(2).sum())
    total = expected_l2(model)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert first.gate.log_alpha.grad is None  # the probabilities are detached
    assert float(first.weight.grad.abs().sum()) > 0


def test_expected_l2_counts_ungated_parameters_in_full() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    gate_model(model, layers=["3"])
    with torch.no_grad():
        model[3].gate.log_alpha.fill_(10.0)
    plain = sum(p.pow(2).sum() for name, p in model.named_parameters() if not name.startswith("3."))
    gated = (model[3].weight.pow(2).sum() * torch.sigmoid(torch.tensor(10.0 + ACTIVE_SHIFT))
             + model[3].bias.pow(2).sum())
    torch.testing.assert_close(expected_l2(model), plain + gated)


def test_dividing_gated_conv_decay_scales_conv_terms_by_the_keep_rate_only() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    gate_model(model, droprate_init=[0.3, 0.5])
    conv = model[0]
    plain = expected_l2(model)
    divided = expected_l2(model, divide_gated_convs=True)
    torch.testing.assert_close(divided - plain, conv.expected_l2() * (1 / 0.7 - 1))
