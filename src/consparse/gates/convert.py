"""Turning a plain model into a gated one (in place), and a gated one back into a plain dense copy.

``gate_model`` works on any model of the platform through the chains of ``chains.py``: the same
function gates mlp, lenet5, resnet18/20/50 and wrn28_10. ``fold_gates`` gives the dense
architecture with the trained weights and the deterministic test gates multiplied in, so it
computes exactly what the gated model computes in eval mode.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from consparse.errors import ParameterError
from consparse.gates.batchnorm import GATE_PLACEMENTS, GatedBatchNorm2d
from consparse.gates.chains import find_chains
from consparse.gates.layers import GatedConv2d, GatedLayer, GatedLinear
from consparse.validation import check_choice, check_length, check_range


def gateable_layers(model: nn.Module) -> dict[str, bool]:
    """``{layer name: gated by default}`` for every Linear/Conv2d that may carry gates, in module order."""
    layers: dict[str, bool] = {}
    for chain in find_chains(model):
        for slot in chain.weighted_slots():
            layers[chain.slot_path(slot)] = slot in chain.default_gated
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(layers.items(), key=lambda item: order[item[0]]))


def _select(model: nn.Module, patterns: Sequence[str] | None) -> list[str]:
    candidates = gateable_layers(model)
    if patterns is None:
        return [name for name, default in candidates.items() if default]
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ParameterError("gated_layers", f"expected null or a list of name patterns, got {patterns!r}")
    chosen = [name for name in candidates if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not chosen:
        raise ParameterError(
            "gated_layers",
            f"{list(patterns)} matches none of the layers that can carry gates: {list(candidates)}",
        )
    return chosen


def _droprates(droprate_init: float | Sequence[float], count: int) -> list[float]:
    values = [droprate_init] * count if isinstance(droprate_init, (int, float)) else list(droprate_init)
    check_length("droprate_init", values, count, "gated layers")
    for value in values:
        check_range("droprate_init", value, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return [float(v) for v in values]


def gate_model(
    model: nn.Module,
    structured: bool = True,
    droprate_init: float | Sequence[float] = 0.5,
    layers: Sequence[str] | None = None,
    placement: str = "norm_output",
) -> list[str]:
    """Replace the chosen Linear/Conv2d layers of ``model`` by gated ones, in place.

    Args:
        model: a plain model (its layers' Parameters are reused, not copied).
        structured: gates per input neuron (Linear) / output channel (Conv2d), or per weight.
        droprate_init: initial drop rate, one number or one per gated layer (module order).
        layers: ``fnmatch`` patterns of layer names (``layers.1``, ``layer2.*.conv1``) choosing among
            the layers that can carry gates; None gates the paper's choice (every Linear/Conv of a
            Sequential chain, and the residual-branch convs listed in ``chains.BLOCK_LAYOUTS``).
        placement: where a structured convolution's gate acts when a BatchNorm follows it:
            ``norm_output`` (on the BatchNorm's output) or ``filter`` (on the filter, the authors'
            code); see ``batchnorm.py``. Without a BatchNorm after it a convolution gates its filter.

    Returns:
        The names of the gated layers, in module order.
    """
    check_choice("gate_placement", placement, GATE_PLACEMENTS)
    names = _select(model, layers)
    rates = dict(zip(names, _droprates(droprate_init, len(names))))
    for chain in find_chains(model):
        for index, slot in enumerate(chain.slots):
            name = chain.slot_path(slot)
            if name not in rates:
                continue
            layer = chain.module(slot)
            if isinstance(layer, GatedLayer):
                raise TypeError(f"gate_model: {name} is already gated")
            if isinstance(layer, nn.Conv2d):
                gated: nn.Module = GatedConv2d.from_conv(layer, structured, rates[name])
                following = chain.module(chain.slots[index + 1]) if index + 1 < len(chain.slots) else None
                if structured and type(following) is nn.BatchNorm2d:
                    if not following.affine:
                        raise ValueError(f"gate_model: the BatchNorm after {name} has no affine parameters to fold a gate into")
                    gated.gate_applied_by_norm = placement == "norm_output"
                    setattr(chain.owner, chain.slots[index + 1],
                            GatedBatchNorm2d.from_batchnorm(following, gated.gate, placement=placement))
            else:
                gated = GatedLinear.from_linear(layer, structured, rates[name])
            setattr(chain.owner, slot, gated)
    return names


def gated_layers(model: nn.Module) -> list[tuple[str, GatedLayer]]:
    """``(name, layer)`` of every gated layer, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, GatedLayer)]


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``log_alpha`` of every gate."""
    return [layer.gate.log_alpha for _, layer in gated_layers(model)]


def clamp_gates(model: nn.Module) -> None:
    """Clamp every ``log_alpha`` to [log 1e-2, log 1e2] (after each optimiser step)."""
    for _, layer in gated_layers(model):
        layer.gate.clamp_()


def plain_copy(module: nn.Module) -> nn.Module:
    """A standard layer equal to gated ``module`` in eval mode (test gates folded in); others as they are."""
    if isinstance(module, GatedLinear):
        plain: nn.Module = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                     device="meta")
    elif isinstance(module, GatedConv2d):
        plain = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                          padding=module.padding, dilation=module.dilation, groups=module.groups,
                          bias=module.bias is not None, padding_mode=module.padding_mode, device="meta")
    elif isinstance(module, GatedBatchNorm2d):
        plain = nn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                               track_running_stats=module.track_running_stats, device="meta")
    else:
        return copy.deepcopy(module)
    weight, bias = folded_parameters(module)
    plain = plain.to_empty(device=module.weight.device)
    with torch.no_grad():
        if weight is not None:
            plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
        for name, buffer in module.named_buffers(recurse=False):
            getattr(plain, name).copy_(buffer)
    return plain.train(module.training)


@torch.no_grad()
def folded_parameters(module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Weight and bias of a gated layer or GatedBatchNorm2d with its test gates multiplied in."""
    if isinstance(module, GatedBatchNorm2d):
        scale = module.deterministic_scale()
        return module.weight * scale, module.bias * scale
    if isinstance(module, GatedLayer):
        return module.folded_weight(), module.folded_bias()
    raise TypeError(f"{type(module).__name__} carries no gates")


def fold_gates(model: nn.Module) -> nn.Module:
    """A plain copy of gated ``model``: every gated module replaced by its ``plain_copy``."""
    copied = copy.deepcopy(model)
    replacements = [(name, module) for name, module in copied.named_modules()
                    if isinstance(module, (GatedLayer, GatedBatchNorm2d))]
    for name, module in replacements:
        parent_name, _, attribute = name.rpartition(".")
        setattr(copied.get_submodule(parent_name), attribute, plain_copy(module))
    return copied
