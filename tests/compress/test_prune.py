"""Magnitude (global / per-layer) and filter pruning: exact counts, same choice as torch.nn.utils.prune."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from consparse.compress.count import nonzero_count, numel_count, sparsifiable_weights
from consparse.compress.prune import (
    _keep_mask,
    apply_masks,
    compute_masks,
    compute_masks_for_amounts,
    filter_prunable_layers,
    filter_prune,
    magnitude_prune,
    magnitude_prune_amounts,
    prune_to_density,
)
from consparse.errors import ConfigError
from consparse.models.mlp import MLP


def layer_weights(model: nn.Module) -> list[torch.Tensor]:
    return list(sparsifiable_weights(model).values())


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.77, 0.95])
def test_global_prune_count_is_exact_and_matches_torch_global_unstructured(small_cnn, amount: float) -> None:
    pruned = magnitude_prune(small_cnn, amount, scope="global")
    total = numel_count(sparsifiable_weights(small_cnn))
    assert nonzero_count(sparsifiable_weights(pruned)) == total - round(amount * total)

    expected = copy.deepcopy(small_cnn)
    layers = [(m, "weight") for m in expected.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for module, name in layers:
        torch_prune.remove(module, name)
    for ours, theirs in zip(layer_weights(pruned), layer_weights(expected)):
        assert torch.equal(ours, theirs)


def test_layer_prune_removes_the_same_fraction_in_each_tensor(small_mlp: MLP) -> None:
    pruned = magnitude_prune(small_mlp, 0.6, scope="layer")
    for ours, original in zip(layer_weights(pruned), layer_weights(small_mlp)):
        assert nonzero_count([ours]) == original.numel() - round(0.6 * original.numel())
        mask = torch_prune.L1Unstructured(0.6).compute_mask(original.detach(), torch.ones_like(original))
        assert torch.equal(ours, original.detach() * mask)


def test_ties_still_give_an_exact_count() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        for layer in model:
            layer.weight.fill_(0.5)
    for scope in ("global", "layer"):
        pruned = magnitude_prune(model, 0.35, scope=scope)
        assert nonzero_count(sparsifiable_weights(pruned)) == 200 - 70


def test_biases_and_batchnorm_are_untouched(small_cnn) -> None:
    pruned = magnitude_prune(small_cnn, 0.9)
    original = small_cnn.state_dict()
    weights = set(sparsifiable_weights(small_cnn))
    for key, value in pruned.state_dict().items():
        if key not in weights:
            assert torch.equal(value, original[key]), key


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_the_input_model_is_never_modified(small_cnn, watch, scope: str) -> None:
    check = watch(small_cnn)
    magnitude_prune(small_cnn, 0.5, scope=scope)
    prune_to_density(small_cnn, 0.2, scope=scope)
    filter_prune(small_cnn, 0.5)
    check()


def test_prune_to_density_counts_existing_zeros_as_pruned(small_mlp: MLP) -> None:
    half = magnitude_prune(small_mlp, 0.5)
    total = numel_count(sparsifiable_weights(small_mlp))
    already = nonzero_count(sparsifiable_weights(half))
    assert nonzero_count(sparsifiable_weights(prune_to_density(half, 0.7))) == already
    assert nonzero_count(sparsifiable_weights(prune_to_density(half, 0.5))) == already
    assert nonzero_count(sparsifiable_weights(prune_to_density(half, 0.3))) == total - round(0.7 * total)
    assert nonzero_count(sparsifiable_weights(prune_to_density(small_mlp, 1.0))) == total


def test_masks_keep_pruned_weights_at_zero_after_updates(small_mlp: MLP) -> None:
    masks = compute_masks(small_mlp, 0.8, scope="layer")
    assert set(masks) == set(sparsifiable_weights(small_mlp))
    assert all(mask.dtype == torch.bool for mask in masks.values())
    with torch.no_grad():
        for weight in layer_weights(small_mlp):
            weight.add_(1.0)  # an optimiser step that would revive pruned weights
    apply_masks(small_mlp, masks)
    for name, weight in sparsifiable_weights(small_mlp).items():
        assert torch.equal(weight != 0, masks[name])


def test_apply_masks_rejects_unknown_names(small_mlp: MLP) -> None:
    with pytest.raises(KeyError, match="not sparsifiable"):
        apply_masks(small_mlp, {"layers.0.weight": torch.ones(1, dtype=torch.bool)})


def test_computed_tensors_cannot_be_pruned_in_place() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.raw = nn.Parameter(torch.randn(3, 3))

        def sparsifiable_weights(self) -> dict[str, torch.Tensor]:
            return {"W": self.raw * 2}

    with pytest.raises(ValueError, match="computed"):
        magnitude_prune(Scaled(), 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_amount_out_of_range_is_a_config_error(small_mlp: MLP, bad: float) -> None:
    with pytest.raises(ConfigError, match=r"amount"):
        magnitude_prune(small_mlp, bad)
    with pytest.raises(ConfigError, match=r"amount"):
        filter_prune(small_mlp, bad)


def test_unknown_scope_is_a_config_error(small_mlp: MLP) -> None:
    with pytest.raises(ConfigError, match="scope"):
        magnitude_prune(small_mlp, 0.5, scope="model")


def test_filter_prune_zeros_the_filters_with_smallest_l1_norm(small_cnn) -> None:
    pruned = filter_prune(small_cnn, 0.5, include_linear=False)
    for index in (0, 3):
        original = small_cnn[index].weight.detach()
        weight = pruned[index].weight.detach()
        norms = original.abs().sum(dim=(1, 2, 3))
        n_filters = original.shape[0]
        removed = torch.argsort(norms)[: n_filters // 2]
        kept_filters = (weight.reshape(n_filters, -1) != 0).any(dim=1)
        assert not kept_filters[removed].any()
        assert int(kept_filters.sum()) == n_filters - n_filters // 2
        assert torch.equal(pruned[index].bias[removed], torch.zeros(len(removed)))
        # torch's PFEC implementation chooses the same filters
        expected = copy.deepcopy(small_cnn[index])
        torch_prune.ln_structured(expected, "weight", amount=0.5, n=1, dim=0)
        assert torch.equal(weight, expected.weight.detach())
    assert torch.equal(pruned[7].weight, small_cnn[7].weight)  # the classifier is never pruned


def test_filter_prune_linear_rows_but_never_the_classifier(small_mlp: MLP) -> None:
    assert [name for name, _ in filter_prunable_layers(small_mlp)] == ["layers.1", "layers.3"]
    assert filter_prunable_layers(small_mlp, include_linear=False) == []
    pruned = filter_prune(small_mlp, 0.25)
    for index, rows in ((1, 16), (3, 8)):
        weight = pruned.layers[index].weight.detach()
        zero_rows = (weight == 0).all(dim=1)
        assert int(zero_rows.sum()) == round(0.25 * rows)
        norms = small_mlp.layers[index].weight.detach().abs().sum(dim=1)
        assert torch.equal(
            zero_rows.nonzero().flatten().sort().values,
            torch.argsort(norms)[: round(0.25 * rows)].sort().values,
        )
        assert (pruned.layers[index].bias[zero_rows] == 0).all()
    assert torch.equal(pruned.layers[5].weight, small_mlp.layers[5].weight)


def test_filter_prune_zeroes_a_pruned_filter_output_only_with_prune_bias() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(3, 2, 1, 1)
    with_bias = filter_prune(conv, 0.5)
    without_bias = filter_prune(conv, 0.5, prune_bias=False)
    removed = (with_bias[0].weight.reshape(4, -1) == 0).all(dim=1)
    assert torch.equal(with_bias[0](x)[:, removed], torch.zeros(3, 2, 1, 1))
    kept_bias = conv[0].bias.detach()[removed].reshape(1, -1, 1, 1).expand(3, -1, -1, -1)
    assert torch.equal(without_bias[0](x)[:, removed], kept_bias)


def test_filter_prune_keeps_at_least_one_filter() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2, 2))
    pruned = filter_prune(model, 0.9)
    assert nonzero_count([pruned[0].weight]) == 9
    assert nonzero_count([pruned[1].weight]) == 1


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_masks_for_several_amounts_are_the_masks_of_each_amount(small_resnet, scope) -> None:
    # Ties and zeros at the thresholds: rounded magnitudes, a quarter of them already zero.
    with torch.no_grad():
        for weight in sparsifiable_weights(small_resnet).values():
            weight.copy_(torch.round(weight * 8) / 8)
    amounts = [0.0, 0.25, 0.5, 0.9, 0.99]
    weights = sparsifiable_weights(small_resnet)
    together = compute_masks_for_amounts(small_resnet, amounts, scope)
    for amount, masks in zip(amounts, together):
        # Each amount on its own, with torch's kthvalue threshold.
        if scope == "layer":
            alone = {name: _keep_mask(w.abs(), round(amount * w.numel())) for name, w in weights.items()}
        else:
            scores = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
            flat = _keep_mask(scores, round(amount * scores.numel())).split([w.numel() for w in weights.values()])
            alone = {name: part.reshape(w.shape) for (name, w), part in zip(weights.items(), flat)}
        assert masks.keys() == alone.keys()
        assert all(torch.equal(masks[name], alone[name]) for name in masks)
        assert all(torch.equal(masks[name], mask) for name, mask in compute_masks(small_resnet, amount, scope).items())
    pruned = magnitude_prune_amounts(small_resnet, amounts, scope)
    for amount, model in zip(amounts, pruned):
        reference = magnitude_prune(small_resnet, amount, scope)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
