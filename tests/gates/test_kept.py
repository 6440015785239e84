"""Kept weights: the count for the test gates equals the purged model's, and the expectation over
the gates equals a Monte-Carlo average of purged models with sampled gates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from consparse.compress.count import density, nonzero_count, sparsifiable_weights
from consparse.gates import fold_gates, gate_model, gated_layers, purge
from consparse.gates.hard_concrete import sample_gate
from consparse.gates.kept import KeptWeights
from consparse.models.lenet import LeNet5
from consparse.models.mlp import MLP

SMALL_MNIST = (1, 16, 16)


def _small(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """Narrow layers, so that whole layers switching off (the cascade's any-alive events) happen often."""
    torch.manual_seed(0)
    if name == "mlp":
        return MLP([1, 3, 3], 3, hidden=[4, 3]), (1, 3, 3)
    return LeNet5(list(SMALL_MNIST), 3, conv_channels=(3, 4), hidden=(5,)), SMALL_MNIST


def _spread(model: nn.Module, low: float, high: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.gate.log_alpha.copy_(torch.rand(layer.gate.log_alpha.shape, generator=generator) * (high - low) + low)


def _open_where(model: nn.Module, masks: list[torch.Tensor]) -> None:
    """Set every test gate to exactly 1 where ``mask`` and exactly 0 elsewhere."""
    with torch.no_grad():
        for (_, layer), mask in zip(gated_layers(model), masks):
            layer.gate.log_alpha.copy_(torch.where(mask, 10.0, -10.0))


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "unstructured"])
def test_count_for_the_test_gates_is_the_purged_models(architecture: str, structured: bool, architectures,
                                                       gate_helpers) -> None:
    builder, shape, _ = architectures[architecture]
    torch.manual_seed(0)
    model = builder()
    gate_model(model, structured=structured)
    kept = KeptWeights(model, shape)
    for seed in range(3):
        gate_helpers.scramble(model, seed)
        purged = purge(model.eval(), shape)
        # The density is a float32 share: on ResNet-50's 25M weights it is exact to a few weights.
        assert float(kept.model_density(deployed=True)) * kept.total == pytest.approx(
            nonzero_count(sparsifiable_weights(purged)), rel=2e-7, abs=0.5)
        assert float(kept.model_density(deployed=True)) == pytest.approx(density(purged, fold_gates(model)), abs=1e-6)


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_whole_layers_switching_off_cascade_through_the_count(name: str) -> None:
    model, shape = _small(name)
    gate_model(model, structured=True)
    kept = KeptWeights(model, shape)
    masks = [torch.ones(layer.gate.log_alpha.shape, dtype=torch.bool) for _, layer in gated_layers(model)]
    masks[-1][:] = False  # the last layer reads nothing: everything before it is dropped too
    _open_where(model, masks)
    purged = purge(model.eval(), shape)
    assert nonzero_count(sparsifiable_weights(purged)) == 0
    assert float(kept.model_density(deployed=True)) == 0.0


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_expected_count_matches_a_monte_carlo_average_of_purged_models(name: str) -> None:
    model, shape = _small(name)
    gate_model(model, structured=True)
    _spread(model, -3.0, 1.0, seed=1)  # P(z != 0) from about 0.2 to 0.9
    kept = KeptWeights(model, shape)
    expected = {key: float(value.detach()) for key, value in kept.per_layer().items()}
    log_alphas = [layer.gate.log_alpha.detach().clone() for _, layer in gated_layers(model)]
    samples, generator = 300, torch.Generator().manual_seed(2)
    counts: dict[str, list[int]] = {key: [] for key in expected}
    for _ in range(samples):
        masks = [sample_gate(a, torch.rand(a.shape, generator=generator)) > 0 for a in log_alphas]
        _open_where(model, masks)
        purged = purge(model.eval(), shape)
        # The purge keeps the layers' order (a sliced layer may sit in a Sequential beside an IndexSelect).
        weights = list(sparsifiable_weights(purged).values())
        assert len(weights) == len(counts)
        for key, weight in zip(counts, weights):
            counts[key].append(int(torch.count_nonzero(weight)))
    for key, values in counts.items():
        observed = torch.tensor(values, dtype=torch.float64)
        # Five standard errors of the mean (plus a little for a layer that never varies).
        tolerance = 5 * float(observed.std()) / math.sqrt(samples) + 1e-6
        assert float(observed.mean()) == pytest.approx(expected[key], abs=tolerance), key
    total = sum(expected.values())
    assert total < sum(layer.weight.numel() for _, layer in gated_layers(model))


def test_expected_count_is_differentiable_and_below_the_gate_share_in_a_cascade() -> None:
    from consparse.gates import expected_model_density

    model, shape = _small("mlp")
    gate_model(model, structured=True)
    _spread(model, -2.0, 0.0, seed=3)
    kept = KeptWeights(model, shape)
    value = kept.model_density()
    value.backward()
    assert all(layer.gate.log_alpha.grad is not None and bool((layer.gate.log_alpha.grad > 0).all())
               for _, layer in gated_layers(model))
    # Kept weights need both ends of a weight alive, so they fall faster than the share of open gates.
    assert float(value) < float(expected_model_density(model))
