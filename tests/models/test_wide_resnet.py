"""Wide ResNet: depth rule, widths, pre-activation residual adds, dropout, and config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.errors import ParameterError
from consparse.models.wide_resnet import WideBasicBlock, WideResNet


def test_small_wrn_trains_one_step() -> None:
    torch.manual_seed(0)
    model = WideResNet([3, 16, 16], 4, depth=10, widen_factor=2, dropout=0.3)
    logits = model(torch.randn(3, 3, 16, 16))
    assert logits.shape == (3, 4)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("depth", "widen"), [(10, 1), (16, 2), (28, 10)])
def test_stages_have_n_blocks_of_the_widened_widths(depth: int, widen: int) -> None:
    n = (depth - 4) // 6
    with torch.device("meta"):
        model = WideResNet([3, 32, 32], 10, depth=depth, widen_factor=widen)
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(stage) for stage in stages] == [n, n, n]
    assert all(isinstance(block, WideBasicBlock) for stage in stages for block in stage)
    assert [stage[-1].conv2.out_channels for stage in stages] == [16 * widen, 32 * widen, 64 * widen]
    assert [stage[0].conv1.stride for stage in stages] == [(1, 1), (2, 2), (2, 2)]
    assert model.fc.in_features == 64 * widen


def test_shortcut_convs_only_where_width_or_stride_changes() -> None:
    widened = WideResNet([3, 32, 32], 10, depth=16, widen_factor=2)
    shortcuts = [
        name
        for name, m in widened.named_modules()
        if isinstance(m, WideBasicBlock) and m.shortcut is not None
    ]
    assert shortcuts == ["layer1.0", "layer2.0", "layer3.0"]
    # With k = 1 the first stage keeps 16 channels at stride 1, so its first block adds the input itself.
    plain = WideResNet([3, 32, 32], 10, depth=16, widen_factor=1)
    assert plain.layer1[0].shortcut is None
    assert plain.layer2[0].shortcut.kernel_size == (1, 1)


def test_block_adds_the_input_when_the_shape_is_kept() -> None:
    block = WideBasicBlock(8, 8, stride=1, dropout=0.0).eval()
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


def test_block_projects_the_preactivated_input_when_the_shape_changes() -> None:
    block = WideBasicBlock(4, 8, stride=2, dropout=0.0).eval()
    nn.init.uniform_(block.bn1.weight)
    nn.init.uniform_(block.bn1.bias)
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(block(x), block.shortcut(torch.relu(block.bn1(x))))
    assert block(x).shape == (2, 8, 3, 3)


def test_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    model = WideResNet([3, 8, 8], 10, depth=10, widen_factor=1, dropout=0.5)
    assert all(block.dropout.p == 0.5 for block in model.modules() if isinstance(block, WideBasicBlock))
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize("depth", [27, 8, 4, 30, 28.0, "28"])
def test_wrong_depth_is_a_config_error(depth) -> None:
    with pytest.raises(ParameterError) as error:
        WideResNet([3, 32, 32], 10, depth=depth)
    assert error.value.name == "depth"
    assert "6n+4" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"widen_factor": 0}, "widen_factor"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_width_or_dropout_is_a_config_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ParameterError) as error:
        WideResNet([3, 32, 32], 10, depth=10, **kwargs)
    assert error.value.name == field


def test_vector_input_is_a_config_error() -> None:
    with pytest.raises(ParameterError, match=r"\[C, H, W\]"):
        WideResNet([784], 10, depth=10)


def test_the_stride_can_sit_on_conv2_as_in_louizos_code() -> None:
    from consparse.compress.count import flop_profile

    with torch.device("meta"):
        standard = WideResNet([3, 32, 32], 10, depth=28, widen_factor=10)
        louizos = WideResNet([3, 32, 32], 10, depth=28, widen_factor=10, strided_conv="conv2")
    assert [louizos.layer2[0].conv1.stride, louizos.layer2[0].conv2.stride] == [(1, 1), (2, 2)]
    assert sum(p.numel() for p in louizos.parameters()) == sum(p.numel() for p in standard.parameters())
    small = WideResNet([3, 8, 8], 10, depth=10, widen_factor=1, strided_conv="conv2")
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    macs = flop_profile(WideResNet([3, 32, 32], 10, depth=28, widen_factor=10, strided_conv="conv2"), (3, 32, 32)).total / 2
    assert macs / 1e9 == pytest.approx(5.96, abs=0.01)  # the authors' all_models_stats.csv: 5.96 G


def test_an_unknown_strided_conv_is_a_config_error() -> None:
    with pytest.raises(ParameterError, match="strided_conv"):
        WideResNet([3, 32, 32], 10, depth=10, strided_conv="shortcut")
