"""Residual networks: torchvision's ResNet-18 / ResNet-50 with a choice of stem, and the CIFAR ResNet-20.

All of them are built from torchvision's blocks so that shared code (gating, purging, pruning) meets
one block layout:

* ``BasicBlock`` (ResNet-18, ResNet-20): ``conv1(3x3, stride s) -> bn1 -> relu -> conv2(3x3) -> bn2``,
  then ``out += identity`` where ``identity = downsample(x)`` if the block has a ``downsample``
  (``Sequential(Conv2d 1x1 stride s, BatchNorm2d)``) else ``x``, then ``relu``. The one ``relu``
  module is applied twice.
* ``Bottleneck`` (ResNet-50): ``conv1(1x1) -> bn1 -> relu -> conv2(3x3, stride s) -> bn2 -> relu ->
  conv3(1x1, 4x width) -> bn3``, the same residual add with ``downsample``, then ``relu``.

Top level (same attribute names for all three, as in torchvision): ``conv1 -> bn1 -> relu ->
maxpool -> layer1 -> ... -> layerK -> avgpool (AdaptiveAvgPool2d(1)) -> torch.flatten -> fc``.
``maxpool`` is ``nn.Identity`` for the CIFAR and TinyImageNet stems, and ResNet-20 has none
(three stages, ``layer1..layer3``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from consparse.errors import ParameterError
from consparse.validation import check_choice

STEMS = ("auto", "imagenet", "cifar", "tinyimagenet")
_STEM_WIDTH = 64


def resolve_stem(stem: str, side: int) -> str:
    """The stem ``auto`` stands for, given the smaller image side.

    ``auto`` follows the references: up to 32 px (CIFAR, MNIST) the CIFAR stem (3x3 stride-1 conv,
    no max-pool) keeps the 32x32 map the CIFAR ResNet-18 works on; up to 64 px (TinyImageNet) the
    L0 paper's stem (3x3 stride-2 conv, no max-pool); above that the ImageNet stem (7x7 stride-2
    conv and 3x3 stride-2 max-pool).
    """
    check_choice("stem", stem, STEMS)
    if stem != "auto":
        return stem
    if side <= 32:
        return "cifar"
    if side <= 64:
        return "tinyimagenet"
    return "imagenet"


def _image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ParameterError(
            "",
            f"{model} needs image inputs [C, H, W], the dataset gives {list(input_shape)}; "
            "use an image dataset",
        )
    channels, height, width = (int(d) for d in input_shape)
    return channels, height, width


def _kaiming_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
) -> nn.Conv2d:
    """A bias-free conv initialised as torchvision initialises every ResNet conv."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _torchvision_resnet(
    builder: Callable[..., tv_resnet.ResNet],
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    stem: str,
) -> tv_resnet.ResNet:
    channels, height, width = _image_shape(input_shape, name)
    resolved = resolve_stem(stem, min(height, width))
    # weights=None: never download; runs are offline and every method trains from scratch.
    model = builder(weights=None, num_classes=num_classes)
    if resolved == "imagenet":
        if channels != 3:
            model.conv1 = _kaiming_conv(channels, _STEM_WIDTH, 7, stride=2, padding=3)
    else:
        stride = 1 if resolved == "cifar" else 2
        model.conv1 = _kaiming_conv(channels, _STEM_WIDTH, 3, stride=stride, padding=1)
        model.maxpool = nn.Identity()
    return model


def resnet18(input_shape: Sequence[int], num_classes: int, stem: str = "auto") -> tv_resnet.ResNet:
    """torchvision ResNet-18 (BasicBlock, [2, 2, 2, 2]) with the given stem and input channels.

    Args:
        input_shape: ``[C, H, W]`` (from the dataset); ``conv1`` takes ``C`` channels.
        num_classes: width of ``fc`` (from the dataset).
        stem: ``imagenet`` (7x7/2 conv + max-pool), ``cifar`` (3x3/1 conv, no max-pool),
            ``tinyimagenet`` (3x3/2 conv, no max-pool) or ``auto`` (chosen by image side, see
            :func:`resolve_stem`).
    """
    return _torchvision_resnet(tv_resnet.resnet18, "resnet18", input_shape, num_classes, stem)


def resnet50(input_shape: Sequence[int], num_classes: int, stem: str = "auto") -> tv_resnet.ResNet:
    """torchvision ResNet-50 (Bottleneck, [3, 4, 6, 3]); arguments as for :func:`resnet18`."""
    return _torchvision_resnet(tv_resnet.resnet50, "resnet50", input_shape, num_classes, stem)


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet: 3 stages of ``n`` BasicBlocks with 16, 32, 64 channels, depth 6n+2.

    Shortcuts that change shape use option B (1x1 conv + BatchNorm, torchvision's ``downsample``)
    rather than the paper's option A (parameter-free subsampling and zero-padding), so that every
    layer is a standard module that gating and purging code already handles; this adds 2,752
    parameters to ResNet-20 (272,474 instead of 269,722 on CIFAR-10).

    Args:
        input_shape: ``[C, H, W]`` (from the dataset); any side works (global average pooling).
        num_classes: width of ``fc`` (from the dataset).
        depth: 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...).
    """

    widths = (16, 32, 64)

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 20) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ParameterError(
                "depth", f"got {depth!r}; allowed: 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)"
            )
        blocks_per_stage = (depth - 2) // 6
        channels, _, _ = _image_shape(input_shape, f"resnet{depth}")
        self.conv1 = _kaiming_conv(channels, self.widths[0], 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        self.relu = nn.ReLU()
        in_channels = self.widths[0]
        stages = []
        for index, out_channels in enumerate(self.widths):
            stride = 1 if index == 0 else 2
            stages.append(_stage(in_channels, out_channels, blocks_per_stage, stride))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks; the first one strides and projects (option B) when the shape changes."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            tv_resnet.conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
        )
    layers = [tv_resnet.BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample)]
    layers += [tv_resnet.BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    stage = nn.Sequential(*layers)
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return stage
