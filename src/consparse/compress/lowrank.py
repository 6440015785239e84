"""Low-rank decomposition of a trained model by truncated SVD, without retraining (SFW paper, A5).

Each Linear becomes ``Linear(in, r, bias=False) -> Linear(r, out, bias)`` and each Conv2d becomes
``Conv2d(c_in, r, k, stride, padding, dilation, bias=False) -> Conv2d(r, c_out, 1, bias)`` from the
SVD ``W = U S V^T`` of ``W = weight.reshape(c_out, c_in*kh*kw)``: the first factor is ``S_r V_r^T``,
the second ``U_r``, with ``r = max(1, int((1 - amount) * min(c_out, c_in*kh*kw)))``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from consparse.compress.count import owns_sparsifiable_weights
from consparse.compress.layers import LowRankConv2d, LowRankLinear
from consparse.validation import check_range


def kept_rank(amount: float, max_rank: int) -> int:
    """Rank kept when the fraction ``amount`` of the ``max_rank`` singular values is removed.

    ``int((1 - amount) * max_rank)`` as in the SFW code, but tolerant to float error: there
    ``1 - 0.9`` is ``0.0999...`` and 20 singular values would keep 1 instead of 2.
    """
    return max(1, math.floor((1.0 - amount) * max_rank + 1e-9))


def _factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S_r V_r^T, U_r)`` of the rank-``rank`` truncated SVD, computed in float64 for accuracy.

    The top singular vectors come from the eigendecomposition of the smaller Gram matrix
    (``W W^T`` or ``W^T W``) rather than from a full SVD: several times faster for a wide conv
    weight (512 x 4608: ~8x), and in float64 the kept factors agree with the SVD's far below
    float32 rounding except where ``s_r`` and ``s_{r+1}`` nearly coincide (where the truncation
    itself is not unique). Each pair of singular vectors may come out with the opposite sign,
    which leaves the product, the layer's output, unchanged. Where the SVD leaves rounding noise
    (~1e-17) the first factor has the exact zeros of ``W``'s zero columns (``U_r^T W``), so a
    decomposed sparse layer counts those zeros in its density and sparse MACs.
    """
    weight = matrix.detach().to(torch.float64)
    rows, cols = weight.shape
    if rows <= cols:
        u = torch.linalg.eigh(weight @ weight.T).eigenvectors[:, -rank:].flip(1)
        first, second = u.T @ weight, u
    else:
        v = torch.linalg.eigh(weight.T @ weight).eigenvectors[:, -rank:].flip(1)
        scaled = weight @ v  # U_r S_r
        singular = scaled.norm(dim=0)
        first = singular[:, None] * v.T
        second = scaled / singular.clamp_min(torch.finfo(torch.float64).tiny)
    return first.to(matrix.dtype), second.to(matrix.dtype)


def decompose_linear(layer: nn.Linear, rank: int) -> LowRankLinear:
    """The rank-``rank`` factorisation of ``layer`` (on its device and dtype)."""
    first, second = _factors(layer.weight, rank)
    factorised = LowRankLinear(layer.in_features, rank, layer.out_features, bias=layer.bias is not None)
    factorised.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        factorised[0].weight.copy_(first)
        factorised[1].weight.copy_(second)
        if layer.bias is not None:
            factorised[1].bias.copy_(layer.bias)
    return factorised


def decompose_conv2d(layer: nn.Conv2d, rank: int) -> LowRankConv2d:
    """The rank-``rank`` factorisation of an ungrouped ``layer`` (on its device and dtype)."""
    if layer.groups != 1:
        raise ValueError(f"cannot decompose a grouped convolution (groups={layer.groups})")
    c_out = layer.out_channels
    first, second = _factors(layer.weight.reshape(c_out, -1), rank)
    factorised = LowRankConv2d(
        layer.in_channels,
        rank,
        c_out,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
    )
    factorised.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        factorised[0].weight.copy_(first.reshape(factorised[0].weight.shape))
        factorised[1].weight.copy_(second.reshape(factorised[1].weight.shape))
        if layer.bias is not None:
            factorised[1].bias.copy_(layer.bias)
    return factorised


def decomposable_layers(
    model: nn.Module, include_linear: bool = True, include_conv: bool = True
) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` that ``lowrank_decompose`` may replace (before its size check).

    Plain ``nn.Linear`` / ungrouped ``nn.Conv2d`` layers, exact types only.

    Subclasses are left alone on purpose: e.g. ``MultiheadAttention.out_proj`` is a Linear subclass
    whose weight is read directly by its owner, and a gated layer would lose its gate. Modules that
    own their sparsifiable weights and already decomposed pairs are not entered.
    """
    found: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        is_linear = type(module) is nn.Linear
        is_conv = type(module) is nn.Conv2d
        if (is_linear and include_linear) or (is_conv and include_conv and module.groups == 1):
            found.append((prefix, module))
        elif not (owns_sparsifiable_weights(module) or isinstance(module, (LowRankLinear, LowRankConv2d))):
            for name, child in module.named_children():
                visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return found


def lowrank_decompose(
    model: nn.Module,
    amount: float,
    include_linear: bool = True,
    include_conv: bool = True,
    only_if_smaller: bool = True,
) -> nn.Module:
    """A copy of ``model`` with each Linear / Conv2d replaced by its truncated-SVD factor pair.

    ``amount`` is the fraction of singular values removed (the same in every layer). A layer is
    left as it is when its factor pair would have at least as many weights as the layer
    (``r * (fan_in + out) >= out * fan_in``): then the decomposition saves nothing and only adds
    error and latency. ``only_if_smaller=False`` decomposes every layer regardless (for checks).
    Grouped convolutions are skipped.
    """
    check_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    decomposed = copy.deepcopy(model)
    for name, layer in decomposable_layers(decomposed, include_linear, include_conv):
        out_features = layer.weight.shape[0]
        fan_in = layer.weight[0].numel()
        rank = kept_rank(amount, min(out_features, fan_in))
        if only_if_smaller and rank * (fan_in + out_features) >= out_features * fan_in:
            continue
        replacement = (
            decompose_linear(layer, rank) if isinstance(layer, nn.Linear) else decompose_conv2d(layer, rank)
        )
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(decomposed.get_submodule(parent_name), child, replacement)
        else:
            decomposed = replacement
    return decomposed
