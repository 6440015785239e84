"""The small modules deployed models are made of."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.compress.layers import ChannelScatter, IndexSelect, LowRankConv2d, LowRankLinear


def test_low_rank_linear_is_the_product_of_its_factors() -> None:
    layer = LowRankLinear(6, 2, 4)
    x = torch.randn(3, 6)
    expected = x @ (layer[1].weight @ layer[0].weight).T + layer[1].bias
    torch.testing.assert_close(layer(x), expected)
    assert layer.rank == 2 and layer[0].bias is None
    assert LowRankLinear(**layer.constructor_kwargs()).constructor_kwargs() == {
        "in_features": 6,
        "rank": 2,
        "out_features": 4,
        "bias": True,
    }
    assert LowRankLinear(6, 2, 4, bias=False)[1].bias is None


def test_low_rank_conv_keeps_the_geometry_in_its_first_factor() -> None:
    layer = LowRankConv2d(3, 2, 5, kernel_size=3, stride=2, padding=1, dilation=1, bias=True)
    assert layer(torch.randn(1, 3, 8, 8)).shape == (1, 5, 4, 4)
    assert layer[0].kernel_size == (3, 3) and layer[1].kernel_size == (1, 1) and layer[0].bias is None
    kwargs = layer.constructor_kwargs()
    rebuilt = LowRankConv2d(**kwargs)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in layer.parameters()]
    assert rebuilt.constructor_kwargs() == kwargs
    assert LowRankConv2d(3, 2, 5, 3, padding="same")(torch.randn(1, 3, 7, 7)).shape == (1, 5, 7, 7)


def test_index_select_keeps_the_chosen_features_and_carries_them_in_the_state() -> None:
    select = IndexSelect(1, [4, 0, 2])
    x = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(select(x), x[:, [4, 0, 2]])
    assert torch.equal(select.state_dict()["indices"], torch.tensor([4, 0, 2]))
    assert select.constructor_kwargs() == {"dim": 1, "indices": [4, 0, 2]}
    assert torch.equal(IndexSelect(0, torch.tensor([1]))(x), x[1:2])


def test_channel_scatter_pads_the_missing_channels_with_zeros() -> None:
    scatter = ChannelScatter(5, [1, 3])
    x = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = scatter(x)
    assert out.shape == (2, 5, 3, 3)
    assert torch.equal(out[:, [1, 3]], x)
    assert torch.equal(out[:, [0, 2, 4]], torch.zeros(2, 3, 3, 3))
    out.sum().backward()  # differentiable, so a purged model can still be fine-tuned
    assert torch.equal(x.grad, torch.ones_like(x))
    assert scatter.constructor_kwargs() == {"channels": 5, "indices": [1, 3]}


def test_channel_scatter_rejects_indices_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        ChannelScatter(3, [0, 3])


def test_index_buffers_move_with_the_module() -> None:
    model = nn.Sequential(IndexSelect(1, [0, 1]), ChannelScatter(4, [0, 2])).to(torch.float64)
    assert model[0].indices.dtype == torch.long  # float casts leave index buffers alone
    assert model(torch.randn(1, 3, dtype=torch.float64).unsqueeze(-1)).shape == (1, 4, 1)
