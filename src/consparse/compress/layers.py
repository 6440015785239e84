"""Small standard-compatible modules that deployed (compressed) models are made of.

Each module here can be rebuilt from ``constructor_kwargs()`` (JSON values only), which is how
``consparse.compress.export`` describes a deployed model whose structure differs from the dense
skeleton. Any other custom module that should survive an export implements the same method and is
added to ``consparse.compress.export_structure.LAYER_TYPES`` (an export builds only the types listed there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class LowRankLinear(nn.Sequential):
    """``Linear(in, rank, bias=False) -> Linear(rank, out, bias)``: a rank-``rank`` factorised Linear.

    The children are plain ``nn.Linear`` so that counting, pruning and purging treat both factors
    like any other Linear layer.
    """

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True) -> None:
        super().__init__(
            nn.Linear(in_features, rank, bias=False),
            nn.Linear(rank, out_features, bias=bias),
        )

    @property
    def rank(self) -> int:
        return self[0].out_features

    def constructor_kwargs(self) -> dict[str, Any]:
        return {
            "in_features": self[0].in_features,
            "rank": self.rank,
            "out_features": self[1].out_features,
            "bias": self[1].bias is not None,
        }


class LowRankConv2d(nn.Sequential):
    """``Conv2d(c_in, rank, k, stride, padding, dilation, bias=False) -> Conv2d(rank, c_out, 1, bias)``.

    The first factor keeps the spatial geometry of the original convolution, the second is a 1x1
    convolution carrying the original bias (the SFW paper's decomposition).
    """

    def __init__(
        self,
        in_channels: int,
        rank: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                rank,
                _pair(kernel_size),
                stride=_pair(stride),
                padding=padding if isinstance(padding, str) else _pair(padding),
                dilation=_pair(dilation),
                bias=False,
                padding_mode=padding_mode,
            ),
            nn.Conv2d(rank, out_channels, 1, bias=bias),
        )

    @property
    def rank(self) -> int:
        return self[0].out_channels

    def constructor_kwargs(self) -> dict[str, Any]:
        first: nn.Conv2d = self[0]
        return {
            "in_channels": first.in_channels,
            "rank": self.rank,
            "out_channels": self[1].out_channels,
            "kernel_size": list(first.kernel_size),
            "stride": list(first.stride),
            "padding": first.padding if isinstance(first.padding, str) else list(first.padding),
            "dilation": list(first.dilation),
            "bias": self[1].bias is not None,
            "padding_mode": first.padding_mode,
        }


class IndexSelect(nn.Module):
    """Keep the entries ``indices`` of dimension ``dim`` (e.g. the input features that survive a purge).

    The indices are a persistent buffer so that they travel with ``.to(device)`` and the state_dict.
    """

    def __init__(self, dim: int, indices: Sequence[int] | torch.Tensor) -> None:
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("indices", _as_index(indices))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(self.dim, self.indices)

    def constructor_kwargs(self) -> dict[str, Any]:
        return {"dim": self.dim, "indices": self.indices.tolist()}

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kept={self.indices.numel()}"


class ChannelScatter(nn.Module):
    """Place a sliced channel dimension (dim 1) back at ``indices`` of a zero tensor ``channels`` wide.

    A purged residual block computes only its kept channels; the residual addition still needs the
    full width, so the missing channels are zeros (exactly what the gated model produced there).
    """

    def __init__(self, channels: int, indices: Sequence[int] | torch.Tensor) -> None:
        super().__init__()
        index = _as_index(indices)
        if index.numel() > channels or (index.numel() and int(index.max()) >= channels):
            raise ValueError(f"ChannelScatter: indices {index.tolist()} do not fit into {channels} channels")
        self.channels = int(channels)
        self.register_buffer("indices", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = list(x.shape)
        shape[1] = self.channels
        return x.new_zeros(shape).index_copy(1, self.indices, x)

    def constructor_kwargs(self) -> dict[str, Any]:
        return {"channels": self.channels, "indices": self.indices.tolist()}

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kept={self.indices.numel()}"


def _as_index(indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(indices, dtype=torch.long).detach().clone().reshape(-1)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))
