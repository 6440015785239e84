"""Truncated-SVD decomposition of Linear and Conv2d layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.compress.count import count_macs, count_params
from consparse.compress.layers import LowRankConv2d, LowRankLinear
from consparse.compress.lowrank import _factors, decomposable_layers, kept_rank, lowrank_decompose
from consparse.models.mlp import MLP


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_kept_rank_follows_the_sfw_formula() -> None:
    assert kept_rank(0.5, 300) == 150
    assert kept_rank(0.0, 7) == 7
    assert kept_rank(0.99, 10) == 1  # never below one
    assert kept_rank(0.25, 10) == 7  # truncated, as int() does
    assert kept_rank(0.9, 20) == 2  # not 1, although (1 - 0.9) * 20 < 2 in floating point


def test_amount_zero_leaves_the_model_as_it_is(small_mlp: MLP) -> None:
    decomposed = lowrank_decompose(small_mlp, 0.0)
    assert not any(isinstance(m, LowRankLinear) for m in decomposed.modules())
    x = torch.randn(5, 12)
    assert torch.equal(outputs(decomposed, x), outputs(small_mlp, x))


def test_full_rank_decomposition_reproduces_the_mlp(small_mlp: MLP) -> None:
    decomposed = lowrank_decompose(small_mlp, 0.0, only_if_smaller=False)
    assert sum(isinstance(m, LowRankLinear) for m in decomposed.modules()) == 3
    x = torch.randn(5, 12)
    torch.testing.assert_close(outputs(decomposed, x), outputs(small_mlp, x), atol=1e-5, rtol=0)


def test_full_rank_decomposition_reproduces_a_cnn_with_stride_padding_dilation(small_cnn) -> None:
    decomposed = lowrank_decompose(small_cnn, 0.0, only_if_smaller=False)
    assert isinstance(decomposed[0], LowRankConv2d) and isinstance(decomposed[3], LowRankConv2d)
    assert decomposed[3][0].stride == (2, 2) and decomposed[3][0].dilation == (2, 2)
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(outputs(decomposed, x), outputs(small_cnn, x), atol=1e-5, rtol=0)


def test_half_rank_reduces_params_and_macs(mnist_mlp: MLP) -> None:
    decomposed = lowrank_decompose(mnist_mlp, 0.5)
    first = decomposed.layers[1]
    assert isinstance(first, LowRankLinear) and first.rank == 150
    assert count_params(decomposed) < count_params(mnist_mlp)
    assert count_macs(decomposed, [1, 28, 28]) < count_macs(mnist_mlp, [1, 28, 28])
    # 784x300 -> 150*(784+300); 300x100 -> 50*400; 100x10 -> 5*110 (biases unchanged)
    assert count_params(decomposed) == 150 * 1084 + 50 * 400 + 5 * 110 + 300 + 100 + 10


def test_layers_that_would_not_shrink_are_skipped() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    assert lowrank_decompose(model, 0.4)[0].__class__ is nn.Linear  # rank 6: 6*20 >= 100
    assert isinstance(lowrank_decompose(model, 0.6)[0], LowRankLinear)  # rank 4: 80 < 100


def test_truncation_is_exact_for_a_low_rank_weight() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(20, 20)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(20, 2) @ torch.randn(2, 20))
    decomposed = lowrank_decompose(layer, 0.9)  # rank 2; the root module itself is replaced
    assert isinstance(decomposed, LowRankLinear) and decomposed.rank == 2
    x = torch.randn(3, 20)
    torch.testing.assert_close(outputs(decomposed, x), outputs(layer, x), atol=1e-5, rtol=0)


def test_truncation_is_the_best_rank_r_approximation() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3)
    decomposed = lowrank_decompose(nn.Sequential(conv), 0.75)[0]
    product = decomposed[1].weight.reshape(8, -1) @ decomposed[0].weight.reshape(decomposed.rank, -1)
    u, s, vh = torch.linalg.svd(conv.weight.detach().reshape(8, -1), full_matrices=False)
    best = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    assert decomposed.rank == 2
    torch.testing.assert_close(product, best, atol=1e-5, rtol=0)
    assert torch.equal(decomposed[1].bias, conv.bias)


def test_grouped_convs_and_subclasses_are_skipped() -> None:
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.modules.linear.NonDynamicallyQuantizableLinear(8, 8)
    )
    assert decomposable_layers(model) == []
    assert (
        decomposable_layers(nn.Sequential(nn.Conv2d(8, 8, 3), nn.Linear(2, 2)), include_conv=False)[0][0]
        == "1"
    )


def test_decomposed_pairs_are_not_decomposed_again(mnist_mlp: MLP) -> None:
    once = lowrank_decompose(mnist_mlp, 0.5)
    assert decomposable_layers(once) == []


def test_the_input_model_is_not_modified(small_cnn, watch) -> None:
    check = watch(small_cnn)
    lowrank_decompose(small_cnn, 0.5)
    check()


@pytest.mark.parametrize("shape", [(24, 120), (120, 24)])
def test_factors_are_the_svd_factors_up_to_float32_rounding_and_sign(shape) -> None:
    # A decaying spectrum as trained layers have, wide (conv-like) and tall (an expanding Linear).
    generator = torch.Generator().manual_seed(0)
    q_left = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=generator, dtype=torch.float64))[0]
    q_right = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=generator, dtype=torch.float64))[0]
    spectrum = torch.logspace(0, -3, min(shape), dtype=torch.float64)
    weight = (q_left[:, : len(spectrum)] * spectrum) @ q_right[:, : len(spectrum)].T
    weight = weight.to(torch.float32)
    rank = 7
    first, second = _factors(weight, rank)
    u, s, vh = torch.linalg.svd(weight.to(torch.float64), full_matrices=False)
    signs = torch.sign((second.to(torch.float64) * u[:, :rank]).sum(dim=0))
    torch.testing.assert_close(second * signs.to(torch.float32), u[:, :rank].to(torch.float32), atol=1e-6, rtol=0)
    torch.testing.assert_close(first * signs[:, None].to(torch.float32),
                               (s[:rank, None] * vh[:rank]).to(torch.float32), atol=1e-6, rtol=0)


def test_zero_input_columns_stay_exactly_zero_in_the_first_factor() -> None:
    # A layer whose inputs 0 and 3 were pruned away (an L0 model's first layer): the decomposed
    # layer keeps those zeros, so the curve's density and sparse MACs count them.
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    with torch.no_grad():
        layer.weight[:, [0, 3]] = 0.0
    decomposed = lowrank_decompose(layer, 0.7)
    assert isinstance(decomposed, LowRankLinear)
    assert torch.count_nonzero(decomposed[0].weight[:, [0, 3]]) == 0
    assert torch.count_nonzero(decomposed[0].weight[:, [1, 2, 4, 5, 6, 7]]) == decomposed.rank * 6
