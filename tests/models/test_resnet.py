"""ResNet-18/50 stems and input channels, and the CIFAR ResNet's depth rule and option-B shortcuts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from consparse.errors import ParameterError
from consparse.models.resnet import CifarResNet, resnet18, resnet50, resolve_stem


@pytest.mark.parametrize(
    ("stem", "side", "expected"),
    [
        ("auto", 8, "cifar"),
        ("auto", 32, "cifar"),
        ("auto", 33, "tinyimagenet"),
        ("auto", 64, "tinyimagenet"),
        ("auto", 65, "imagenet"),
        ("auto", 224, "imagenet"),
        ("imagenet", 32, "imagenet"),
        ("cifar", 224, "cifar"),
        ("tinyimagenet", 32, "tinyimagenet"),
    ],
)
def test_resolve_stem(stem: str, side: int, expected: str) -> None:
    assert resolve_stem(stem, side) == expected


def test_unknown_stem_is_a_config_error() -> None:
    with pytest.raises(ParameterError) as error:
        resnet18([3, 32, 32], 10, stem="cifar10")
    assert error.value.name == "stem"
    assert "tinyimagenet" in str(error.value)


@pytest.mark.parametrize(
    ("stem", "kernel", "stride", "maxpool", "feature_side"),
    [
        ("imagenet", (7, 7), (2, 2), nn.MaxPool2d, 16),
        ("cifar", (3, 3), (1, 1), nn.Identity, 64),
        ("tinyimagenet", (3, 3), (2, 2), nn.Identity, 32),
    ],
)
def test_stems(stem: str, kernel: tuple, stride: tuple, maxpool: type, feature_side: int) -> None:
    model = resnet18([3, 64, 64], 200, stem=stem)
    assert isinstance(model, ResNet)
    assert model.conv1.kernel_size == kernel and model.conv1.stride == stride
    assert isinstance(model.maxpool, maxpool)
    seen = {}
    model.layer1.register_forward_hook(lambda module, args, out: seen.update(shape=out.shape))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)
    assert seen["shape"] == (1, 64, feature_side, feature_side)


@pytest.mark.parametrize("stem", ["imagenet", "cifar", "tinyimagenet"])
def test_conv1_takes_the_datasets_channels(stem: str) -> None:
    model = resnet18([1, 28, 28], 10, stem=stem)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet50_uses_bottlenecks_and_the_datasets_channels() -> None:
    with torch.device("meta"):
        model = resnet50([4, 224, 224], 5)
    assert isinstance(model.layer1[0], Bottleneck)
    assert model.conv1.in_channels == 4 and model.conv1.kernel_size == (7, 7)
    assert model.fc.out_features == 5


def test_never_downloads_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise AssertionError("a model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with torch.device("meta"):
        resnet18([3, 32, 32], 10)
        resnet50([3, 32, 32], 10)


@pytest.mark.parametrize("model", [resnet18, resnet50, CifarResNet])
def test_vector_input_is_a_config_error(model) -> None:
    with pytest.raises(ParameterError, match=r"\[C, H, W\]"):
        model([784], 10)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 8])
def test_cifar_resnet_has_n_basic_blocks_per_stage(depth: int) -> None:
    n = (depth - 2) // 6
    model = CifarResNet([3, 32, 32], 10, depth=depth)
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(stage) for stage in stages] == [n, n, n]
    assert all(isinstance(block, BasicBlock) for stage in stages for block in stage)
    assert [stage[-1].conv2.out_channels for stage in stages] == [16, 32, 64]
    # depth counts the 3x3 convs and fc, not the 1x1 shortcut convs.
    counted = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    ]
    assert len(counted) == depth


def test_cifar_resnet_uses_option_b_shortcuts_where_the_shape_changes() -> None:
    model = CifarResNet([3, 32, 32], 10)
    with_downsample = [
        name for name, m in model.named_modules() if isinstance(m, BasicBlock) and m.downsample is not None
    ]
    assert with_downsample == ["layer2.0", "layer3.0"]
    for name in with_downsample:
        conv, bn = model.get_submodule(name).downsample
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
        assert isinstance(bn, nn.BatchNorm2d)


def test_resnet56_parameter_count() -> None:
    # 853,018 with option-A shortcuts (He et al. 2016) plus the same 2,752 option-B parameters as ResNet-20.
    model = CifarResNet([3, 32, 32], 10, depth=56)
    assert sum(p.numel() for p in model.parameters()) == 855_770


@pytest.mark.parametrize("depth", [21, 19, 2, 7, 0, -4, 20.0, "20", True])
def test_wrong_depth_is_a_config_error(depth) -> None:
    with pytest.raises(ParameterError) as error:
        CifarResNet([3, 32, 32], 10, depth=depth)
    assert error.value.name == "depth"
    assert "6n+2" in str(error.value)
