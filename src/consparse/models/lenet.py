"""LeNet-5 as in the L0 paper (Louizos et al. 2018): conv20-conv50 (5x5) - fc500 - fc(classes).

Structure (one ``nn.Sequential``, ``self.layers``, of standard modules; no residual adds)::

    for each width c in conv_channels:   Conv2d(c_prev, c, 5x5, stride 1, no padding) -> ReLU -> MaxPool2d(2)
    Flatten                              (c_last * h * w features, h and w computed from input_shape)
    for each width u in hidden:          Linear(prev, u) -> ReLU
    Linear(prev, num_classes)

On 1x28x28 MNIST with the defaults this is conv(1->20) ... fc(800->500) ... fc(500->10): 431,080
parameters, the dense count the L0 paper normalises by.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from consparse.errors import ParameterError

KERNEL_SIZE = 5
POOL_SIZE = 2


def output_side(side: int, stages: int) -> int:
    """Side length after ``stages`` x (unpadded conv, max-pool), as PyTorch computes it (floor)."""
    for _ in range(stages):
        side = (side - KERNEL_SIZE + 1) // POOL_SIZE
    return side


def min_input_side(stages: int) -> int:
    """Smallest image side for which every conv sees at least a kernel and every pool a window."""
    side = 1
    for _ in range(stages):
        side = side * POOL_SIZE + KERNEL_SIZE - 1
    return side


class LeNet5(nn.Module):
    """LeNet-5 sized from ``input_shape = [C, H, W]``.

    Args:
        input_shape: ``[C, H, W]`` of one image (from the dataset).
        num_classes: width of the last Linear (from the dataset).
        conv_channels: output channels of each conv stage (conv 5x5, ReLU, max-pool 2).
        hidden: widths of the hidden Linear layers after the flatten (an int is one layer).
        bias: whether convs and Linears have biases (the L0 paper uses them).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        conv_channels: Sequence[int] = (20, 50),
        hidden: int | Sequence[int] = (500,),
        bias: bool = True,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in conv_channels]
        widths = [int(hidden)] if isinstance(hidden, int) else [int(w) for w in hidden]
        if not channels or any(c < 1 for c in channels):
            raise ParameterError(
                "conv_channels", f"got {list(conv_channels)}; give at least one width, each >= 1"
            )
        if any(w < 1 for w in widths):
            raise ParameterError("hidden", f"got {hidden}; every width must be >= 1")
        if len(input_shape) != 3:
            raise ParameterError(
                "",
                f"lenet5 needs image inputs [C, H, W], the dataset gives {list(input_shape)}; "
                "use an image dataset",
            )
        in_channels, height, width = (int(d) for d in input_shape)
        smallest = min_input_side(len(channels))
        if min(height, width) < smallest:
            raise ParameterError(
                "",
                f"lenet5 with {len(channels)} conv stages needs images of at least {smallest}x{smallest}, "
                f"the dataset gives {height}x{width}; use larger images "
                "(e.g. dataset=digits dataset.image_size=28, or MNIST/FashionMNIST/CIFAR)",
            )
        modules: list[nn.Module] = []
        for out_channels in channels:
            modules += [
                nn.Conv2d(in_channels, out_channels, KERNEL_SIZE, bias=bias),
                nn.ReLU(),
                nn.MaxPool2d(POOL_SIZE),
            ]
            in_channels = out_channels
        in_features = in_channels * output_side(height, len(channels)) * output_side(width, len(channels))
        modules.append(nn.Flatten())
        for hidden_width in widths:
            modules += [nn.Linear(in_features, hidden_width, bias=bias), nn.ReLU()]
            in_features = hidden_width
        modules.append(nn.Linear(in_features, num_classes, bias=bias))
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
