"""Wide ResNet (Zagoruyko & Komodakis 2016), WRN-depth-k with pre-activation blocks.

Written here because torchvision has no CIFAR Wide ResNet (its ``wide_resnet50_2`` is a wide
Bottleneck ImageNet model); the layout follows the reference implementation the L0 paper used.

Structure (standard modules only)::

    conv1 (3x3, C -> 16, stride 1)
    layer1, layer2, layer3: nn.Sequential of n WideBasicBlocks, widths 16k, 32k, 64k,
                            the first block of layer2 and layer3 with stride 2
    bn -> relu -> avgpool (AdaptiveAvgPool2d(1)) -> torch.flatten -> fc

WideBasicBlock (pre-activation)::

    a   = relu1(bn1(x))
    out = conv2(dropout(relu2(bn2(conv1(a)))))        conv1 3x3 stride s, conv2 3x3 stride 1
    return out + (shortcut(a) if shortcut is not None else x)

``strided_conv: conv2`` moves the stride to conv2 (conv1 then runs at the block input's resolution):
the block of Louizos et al.'s code, which the L0 paper's authors reuse; it costs more MACs (5.96 G
for WRN-28-10 on 32x32 inputs against 5.24 G) and changes what a gate on conv1 saves.

``shortcut`` is a bias-free 1x1 conv (stride s) on the pre-activated input, present only where the
width or stride changes (the first block of each stage); it is already a standard module, so no
option-A/option-B choice arises. Convs have no bias; ``fc`` has one. depth = 6n+4 as the paper
counts it, with n blocks per stage. WRN-28-10 has 36,479,194 parameters on CIFAR-10 and
36,536,884 on CIFAR-100 (the dense count the L0 paper normalises by).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from consparse.errors import ParameterError
from consparse.validation import check_choice, check_int, check_range

_BASE_WIDTHS = (16, 32, 64)


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 plus the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float,
                 strided_conv: str = "conv1") -> None:
        super().__init__()
        first, second = (stride, 1) if strided_conv == "conv1" else (1, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=first, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        # Always present (p = 0 is the identity) so that every block has the same attributes.
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=second, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        return out + (self.shortcut(activated) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` sized from ``input_shape = [C, H, W]``.

    Args:
        input_shape: ``[C, H, W]`` (from the dataset); any side works (global average pooling).
        num_classes: width of ``fc`` (from the dataset).
        depth: 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...).
        widen_factor: k, the multiplier of the stage widths 16, 32, 64.
        dropout: dropout probability between the two convs of each block (0.3 in the paper's CIFAR runs).
        strided_conv: ``conv1`` (Zagoruyko & Komodakis) or ``conv2`` (Louizos et al.'s code): which conv
            of a downsampling block has the stride.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        strided_conv: str = "conv1",
    ) -> None:
        super().__init__()
        check_choice("strided_conv", strided_conv, ("conv1", "conv2"))
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
            raise ParameterError(
                "depth", f"got {depth!r}; allowed: 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...)"
            )
        check_int("widen_factor", widen_factor, 1)
        check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        if len(input_shape) != 3:
            raise ParameterError(
                "",
                f"wrn needs image inputs [C, H, W], the dataset gives {list(input_shape)}; "
                "use an image dataset",
            )
        blocks_per_stage = (depth - 4) // 6
        self.conv1 = nn.Conv2d(int(input_shape[0]), _BASE_WIDTHS[0], 3, stride=1, padding=1, bias=False)
        in_channels = _BASE_WIDTHS[0]
        stages = []
        for index, base_width in enumerate(_BASE_WIDTHS):
            out_channels = base_width * widen_factor
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(WideBasicBlock(in_channels, out_channels, stride, dropout, strided_conv))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))
