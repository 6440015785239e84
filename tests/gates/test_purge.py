"""Purge: the purged plain model equals the gated model in eval mode, for every architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.compress.count import count_params, density, per_layer_density
from consparse.compress.export import export_model, load_exported
from consparse.compress.layers import ChannelScatter, IndexSelect
from consparse.gates import GatedBatchNorm2d, GatedLayer, fold_gates, gate_model, gated_layers, purge
from consparse.models.lenet import LeNet5
from consparse.models.mlp import MLP
from consparse.models.wide_resnet import WideResNet

MNIST = (1, 28, 28)


@pytest.fixture
def gated(architectures, gate_helpers):
    """``gated(name, structured)``: a gated model with spread gates and warmed BatchNorm, and its input shape."""

    def build(name: str, structured: bool) -> tuple[nn.Module, tuple[int, ...]]:
        builder, shape, _ = architectures[name]
        torch.manual_seed(0)
        model = builder()
        gate_model(model, structured=structured)
        gate_helpers.scramble(model)
        gate_helpers.warm(model, shape)
        return model, shape

    return build


def _assert_equal_outputs(gated: nn.Module, purged: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(purged(x), gated.eval()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "unstructured"])
def test_purged_equals_gated_in_eval_mode(architecture: str, structured: bool, gated) -> None:
    model, shape = gated(architecture, structured)
    purged = purge(model, shape)
    assert not any(isinstance(m, (GatedLayer, GatedBatchNorm2d)) for m in purged.modules())
    assert type(purged) is type(model)
    _assert_equal_outputs(model, purged, shape)
    dense = fold_gates(model)
    if structured:
        assert count_params(purged) < count_params(dense)
    else:
        assert count_params(purged) == count_params(dense)
        assert density(purged, dense) < 1.0


@pytest.mark.slow
def test_purged_equals_gated_for_the_full_wrn28_10(gate_helpers) -> None:
    torch.manual_seed(0)
    model = WideResNet([3, 32, 32], 100)
    gate_model(model)
    gate_helpers.scramble(model)
    gate_helpers.warm(model, (3, 32, 32), steps=1)
    _assert_equal_outputs(model, purge(model, (3, 32, 32)), (3, 32, 32))


def test_purge_leaves_the_gated_model_untouched(gated) -> None:
    model, shape = gated("lenet5", True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    purge(model, shape)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, GatedLayer) for m in model.modules())


def test_mlp_purge_cascades_and_selects_input_pixels() -> None:
    model = MLP(list(MNIST), 10)
    gate_model(model)
    first, second, third = (layer for _, layer in gated_layers(model))
    with torch.no_grad():
        first.gate.log_alpha.fill_(4.0)
        first.gate.log_alpha[:100] = -4.0  # 100 pixels unused
        second.gate.log_alpha.fill_(4.0)
        second.gate.log_alpha[:200] = -4.0  # 200 of the 300 hidden units unused: rows of layer 1 go too
        third.gate.log_alpha.fill_(4.0)
    purged = purge(model, MNIST)
    assert isinstance(purged.layers[0], nn.Sequential) and isinstance(purged.layers[0][1], IndexSelect)
    assert purged.layers[1].weight.shape == (100, 684)
    assert purged.layers[3].weight.shape == (100, 100)
    assert purged.layers[5].weight.shape == (10, 100)
    _assert_equal_outputs(model, purged, MNIST)
    # Layer names are kept, so per-layer densities are measured against the dense layers.
    reference = fold_gates(model)
    assert per_layer_density(purged, reference)["layers.1.weight"] == pytest.approx(100 * 684 / (300 * 784))


def test_lenet_conv_channel_gates_slice_the_next_conv_and_the_flattened_linear() -> None:
    model = LeNet5(list(MNIST), 10)
    gate_model(model)
    conv1, conv2, fc1, fc2 = (layer for _, layer in gated_layers(model))
    with torch.no_grad():
        for layer in (conv1, conv2, fc1, fc2):
            layer.gate.log_alpha.fill_(4.0)
        conv1.gate.log_alpha[:5] = -4.0
        conv2.gate.log_alpha[:10] = -4.0  # 10 of 50 channels: 160 of the 800 flattened features
        fc1.gate.log_alpha[-16:] = -4.0  # the last channel's 16 positions as well
    purged = purge(model, MNIST)
    assert purged.layers[0].weight.shape == (15, 1, 5, 5)
    assert purged.layers[3].weight.shape == (39, 15, 5, 5)  # channel 49 is not read by fc1 any more
    assert purged.layers[7].weight.shape == (500, 624)
    _assert_equal_outputs(model, purged, MNIST)


def test_resnet_branch_outputs_are_scattered_back_to_the_residual_width(gated) -> None:
    model, shape = gated("resnet18", True)
    purged = purge(model, shape)
    block = purged.layer1[0]
    assert isinstance(block.bn2, nn.Sequential) and isinstance(block.bn2[1], ChannelScatter)
    assert block.bn2[1].channels == 64
    assert block.conv1.in_channels == 64  # the block input keeps its width
    assert purged.conv1.weight.shape == model.conv1.weight.shape  # the stem is not gated


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet20"])
def test_purged_model_survives_export(name: str, tmp_path, gated) -> None:
    model, shape = gated(name, True)
    purged = purge(model, shape)
    build_spec = {
        "mlp": {"_target_": "consparse.models.mlp.MLP"},
        "lenet5": {"_target_": "consparse.models.lenet.LeNet5"},
        "resnet20": {"_target_": "consparse.models.resnet.CifarResNet"},
    }[name]
    spec = {**build_spec, "input_shape": list(shape), "num_classes": 10}
    export_model(purged, tmp_path, {}, spec)
    loaded = load_exported(tmp_path)
    _assert_equal_outputs(model, loaded, shape)
