"""gate_model: one function gates every architecture; layer choice, errors, folding back to a plain model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.compress.count import sparsifiable_weights
from consparse.errors import ParameterError
from consparse.gates import (
    GatedBatchNorm2d,
    GatedConv2d,
    GatedLinear,
    fold_gates,
    gate_model,
    gate_parameters,
    gateable_layers,
    gated_layers,
)
from consparse.models.lenet import LeNet5
from consparse.models.mlp import MLP
from consparse.models.resnet import resnet18
from consparse.models.wide_resnet import WideResNet

SMALL_RGB = (3, 16, 16)


def test_default_gates_are_the_papers_layers(architecture: str, architectures) -> None:
    build, _, count = architectures[architecture]
    model = build()
    names = gate_model(model)
    assert len(names) == count
    assert [n for n, _ in gated_layers(model)] == names


def test_mlp_gates_input_neurons_and_lenet_gates_channels_then_neurons() -> None:
    model = LeNet5([1, 28, 28], 10)
    gate_model(model)
    kinds = [(type(layer).__name__, tuple(layer.gate.log_alpha.shape)) for _, layer in gated_layers(model)]
    assert kinds == [("GatedConv2d", (20,)), ("GatedConv2d", (50,)), ("GatedLinear", (800,)), ("GatedLinear", (500,))]


def test_resnet_gates_branch_convs_only_and_gates_their_batchnorms() -> None:
    model = resnet18(list(SMALL_RGB), 10)
    names = gate_model(model)
    assert "conv1" not in names and "fc" not in names
    assert not any("downsample" in n for n in names)
    assert names[:2] == ["layer1.0.conv1", "layer1.0.conv2"]
    assert isinstance(model.layer1[0].bn1, GatedBatchNorm2d) and isinstance(model.layer1[0].bn2, GatedBatchNorm2d)
    assert model.layer1[0].conv1.gate_applied_by_norm
    assert type(model.bn1) is nn.BatchNorm2d


def test_wide_resnet_gates_the_first_conv_of_each_block() -> None:
    model = WideResNet(list(SMALL_RGB), 10, depth=10, widen_factor=2)
    assert gate_model(model) == ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
    assert isinstance(model.layer1[0].bn2, GatedBatchNorm2d)
    assert gateable_layers(model)["layer1.0.conv2"] is False


def test_patterns_choose_layers() -> None:
    model = resnet18(list(SMALL_RGB), 10)
    names = gate_model(model, layers=["layer4.*"])
    assert names == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]


def test_a_pattern_matching_nothing_is_a_config_error_listing_the_candidates() -> None:
    with pytest.raises(ParameterError, match="gated_layers.*layers.1"):
        gate_model(MLP([1, 8, 8], 10), layers=["conv*"])


def test_droprate_list_must_have_one_value_per_gated_layer() -> None:
    with pytest.raises(ParameterError, match="droprate_init: got 2 values but there are 3 gated layers"):
        gate_model(MLP([1, 8, 8], 10), droprate_init=[0.2, 0.5])
    model = MLP([1, 8, 8], 10)
    gate_model(model, droprate_init=[0.2, 0.5, 0.5])
    assert [layer.gate.droprate_init for _, layer in gated_layers(model)] == [0.2, 0.5, 0.5]


def test_gating_reuses_the_parameters_and_keeps_their_names() -> None:
    model = MLP([1, 8, 8], 10)
    weight = model.layers[1].weight
    before = set(sparsifiable_weights(model))
    gate_model(model)
    assert model.layers[1].weight is weight
    assert set(sparsifiable_weights(model)) == before
    assert len(gate_parameters(model)) == 3


def test_unstructured_gates_have_the_weights_shape() -> None:
    model = MLP([1, 8, 8], 10)
    gate_model(model, structured=False)
    assert all(layer.gate.log_alpha.shape == layer.weight.shape for _, layer in gated_layers(model))


def test_gating_twice_is_refused() -> None:
    model = MLP([1, 8, 8], 10)
    gate_model(model)
    with pytest.raises(TypeError, match="already gated"):
        gate_model(model)


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet18"])
def test_fold_gates_gives_a_plain_model_equal_in_eval_mode(name: str, structured: bool, architectures,
                                                          gate_helpers) -> None:
    build, shape, _ = architectures[name]
    model = build()
    gate_model(model, structured=structured)
    gate_helpers.scramble(model)
    gate_helpers.warm(model, shape)
    folded = fold_gates(model)
    assert not any(isinstance(m, (GatedLinear, GatedConv2d, GatedBatchNorm2d)) for m in folded.modules())
    assert {k: v.shape for k, v in folded.state_dict().items()} == {
        k: v.shape for k, v in build().state_dict().items()
    }
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(x), model.eval()(x), atol=1e-5, rtol=0)
