"""Pruning without retraining: unstructured magnitude pruning and filter (PFEC) pruning.

Every public pruning function returns a pruned deep copy and leaves its input untouched.

Why not ``torch.nn.utils.prune``: it addresses tensors as ``(module, attribute)`` pairs and
re-parametrises them (``weight_orig`` + mask + forward hook, undone by ``prune.remove``), while the
sparsifiable tensors here include ones that a module hands out from its own
``sparsifiable_weights()`` (the implicit model's ``A, B, C, D``). A one-shot mask is a threshold on
the magnitudes followed by an in-place multiply, which selects what ``L1Unstructured`` selects; the
tests check that both choose the same weights (``global_unstructured`` and ``ln_structured``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from consparse.compress.count import sparsifiable_layers, sparsifiable_weights
from consparse.validation import check_choice, check_density, check_range

Scope = Literal["global", "layer"]
SCOPES = ("global", "layer")


def _count_to_prune(amount: float, size: int) -> int:
    """Entries to remove: ``round(amount * size)``, as ``torch.nn.utils.prune`` rounds."""
    return round(amount * size)


def _keep_mask(scores: torch.Tensor, n_prune: int, threshold: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (True = keep) removing exactly the ``n_prune`` smallest scores.

    A ``kthvalue`` threshold rather than ``topk`` (what ``L1Unstructured`` uses): the same choice
    when scores are distinct, ~10x faster at ResNet-50 size. Ties at the threshold are removed in
    index order, so the count is exact and the choice deterministic. ``threshold``, when given, is
    the ``n_prune``-th smallest score, found by the caller.
    """
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_prune <= 0:
        return keep.reshape(scores.shape)
    if n_prune >= flat.numel():
        return torch.zeros_like(keep).reshape(scores.shape)
    if threshold is None:
        threshold = torch.kthvalue(flat, n_prune).values
    below = flat < threshold
    keep &= ~below
    ties_to_remove = n_prune - int(torch.count_nonzero(below))
    keep[(flat == threshold).nonzero().flatten()[:ties_to_remove]] = False
    return keep.reshape(scores.shape)


def _kth_smallest(scores: torch.Tensor, counts: Sequence[int]) -> dict[int, torch.Tensor]:
    """``{k: the k-th smallest score}`` for each ``1 <= k <= numel`` of ``counts``, in one selection.

    ``numpy.partition`` places every requested order statistic in one introselect, several times
    faster than one ``kthvalue`` per count; the values are the same order statistics.
    """
    wanted = sorted({k for k in counts if 1 <= k <= scores.numel()})
    if not wanted:
        return {}
    flat = scores.reshape(-1).cpu().numpy()
    selected = np.partition(flat, [k - 1 for k in wanted])
    return {k: torch.tensor(selected[k - 1], dtype=scores.dtype, device=scores.device) for k in wanted}


def compute_masks(model: nn.Module, amount: float, scope: Scope = "global") -> dict[str, torch.Tensor]:
    """``{name: keep mask}`` that zeroes the fraction ``amount`` of sparsifiable weights with smallest |w|.

    ``global``: one ranking over all sparsifiable weights; ``layer``: the same fraction in each
    tensor. Weights that are already zero have the smallest magnitude, so they are chosen first.
    """
    return compute_masks_for_amounts(model, [amount], scope)[0]


def compute_masks_for_amounts(
    model: nn.Module, amounts: Sequence[float], scope: Scope = "global"
) -> list[dict[str, torch.Tensor]]:
    """``compute_masks`` at each of ``amounts``; a global ranking is built and searched once for all."""
    for amount in amounts:
        check_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    check_choice("scope", scope, SCOPES)
    weights = {name: tensor.detach() for name, tensor in sparsifiable_weights(model).items()}
    if not weights:
        return [{} for _ in amounts]
    if scope == "layer":
        return [
            {name: _keep_mask(w.abs(), _count_to_prune(amount, w.numel())) for name, w in weights.items()}
            for amount in amounts
        ]
    scores = torch.cat([w.abs().reshape(-1).to(torch.float32).cpu() for w in weights.values()])
    counts = [_count_to_prune(amount, scores.numel()) for amount in amounts]
    thresholds = _kth_smallest(scores, counts)
    all_masks: list[dict[str, torch.Tensor]] = []
    for n_prune in counts:
        flat = _keep_mask(scores, n_prune, thresholds.get(n_prune))
        masks: dict[str, torch.Tensor] = {}
        offset = 0
        for name, w in weights.items():
            masks[name] = flat[offset : offset + w.numel()].reshape(w.shape).to(w.device)
            offset += w.numel()
        all_masks.append(masks)
    return all_masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero, in place, the entries of each named sparsifiable weight where its mask is False.

    Used by the magnitude method after every optimiser step to keep pruned weights at zero.
    """
    weights = sparsifiable_weights(model)
    unknown = sorted(set(masks) - set(weights))
    if unknown:
        raise KeyError(f"masks name tensors that are not sparsifiable weights of the model: {unknown}")
    with torch.no_grad():
        for name, mask in masks.items():
            weight = weights[name]
            if not weight.is_leaf:
                raise ValueError(
                    f"cannot prune '{name}' in place: it is computed from other tensors; the module that "
                    "returns it from sparsifiable_weights() must return its stored parameter"
                )
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def magnitude_prune(model: nn.Module, amount: float, scope: Scope = "global") -> nn.Module:
    """A copy of ``model`` with the fraction ``amount`` of sparsifiable weights (smallest |w|) zeroed.

    Biases, BatchNorm and other parameters are untouched.
    """
    pruned = copy.deepcopy(model)
    apply_masks(pruned, compute_masks(pruned, amount, scope))
    return pruned


def magnitude_prune_amounts(model: nn.Module, amounts: Sequence[float], scope: Scope = "global") -> list[nn.Module]:
    """``magnitude_prune`` of ``model`` at each of ``amounts`` (the same copies; one ranking for all)."""
    pruned_models = []
    for masks in compute_masks_for_amounts(model, amounts, scope):
        pruned = copy.deepcopy(model)
        apply_masks(pruned, masks)
        pruned_models.append(pruned)
    return pruned_models


def prune_to_density(model: nn.Module, target_density: float, scope: Scope = "global") -> nn.Module:
    """A copy keeping the fraction ``target_density`` of the model's own sparsifiable weights.

    Existing zeros count as pruned: a model already at or below the target loses nothing more.
    """
    check_density("target_density", target_density, allow_none=False)
    return magnitude_prune(model, 1.0 - target_density, scope)


def filter_prunable_layers(model: nn.Module, include_linear: bool = True) -> list[tuple[str, nn.Module]]:
    """Layers ``filter_prune`` acts on: convolutions (not transposed) and, optionally, Linear layers
    except the final classifier (the last Linear in module order)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    classifier = linears[-1] if linears else None

    def prunable(name: str, module: nn.Module) -> bool:
        if isinstance(module, nn.modules.conv._ConvNd):
            return not module.transposed
        return include_linear and isinstance(module, nn.Linear) and name != classifier

    return [(name, module) for name, module in sparsifiable_layers(model) if prunable(name, module)]


def filter_prune(
    model: nn.Module, amount: float, include_linear: bool = True, prune_bias: bool = True
) -> nn.Module:
    """A copy where each layer loses the fraction ``amount`` of output filters with smallest L1 norm.

    PFEC (Li et al. 2016), per layer: conv output filters (dim 0 of the weight) and, with
    ``include_linear``, Linear output neurons (rows); never the final classifier. At least one
    filter per layer is kept so that no layer is cut off entirely.

    ``prune_bias`` also zeroes the bias entries of the removed filters, so that a pruned filter's
    output is exactly zero and the masked model computes what the model with those filters
    physically removed computes (when no BatchNorm follows; BatchNorm is left untouched either way).
    The SFW code masks weights only, which leaves a constant ``bias`` output in a pruned channel;
    ``prune_bias=False`` reproduces that.
    """
    check_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for _, module in filter_prunable_layers(pruned, include_linear):
            weight = module.weight
            n_filters = weight.shape[0]
            n_prune = min(_count_to_prune(amount, n_filters), n_filters - 1)
            if n_prune == 0:
                continue
            norms = weight.detach().abs().reshape(n_filters, -1).sum(dim=1)
            keep = _keep_mask(norms, n_prune)
            weight.mul_(keep.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1))))
            if prune_bias and module.bias is not None:
                module.bias.mul_(keep.to(module.bias.dtype))
    return pruned
