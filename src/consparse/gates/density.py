"""Expected-L0 bookkeeping: expected density per gated layer and for the whole gated model.

``rho_l = sum_g P(z_g != 0) * weights_per_gate / N_l`` with ``N_l`` the layer's weight count, and
``rho_model = sum_l rho_l N_l / sum_l N_l`` over the gated layers only (Gallego-Posada et al. 2022,
part B2 of the reference notes). Both are differentiable functions of ``log_alpha`` alone, so they
are identical on every DDP rank without communication.

These expected densities ignore cascading removal (a column of a Linear whose input neuron the
previous layer no longer produces, a filter whose channel the next layer does not read): the
purged model can be smaller than they say. The platform's ``density`` is measured on the purged
model and shows the cascade.

All of them are computed in full precision inside ``torch.autocast`` (``consparse.precision``).
"""

from __future__ import annotations

import torch
from torch import nn

from consparse.gates.convert import gated_layers
from consparse.gates.layers import GatedConv2d
from consparse.precision import full_precision


@full_precision
def expected_layer_densities(model: nn.Module) -> torch.Tensor:
    """``rho_l`` of every gated layer (module order), differentiable."""
    layers = gated_layers(model)
    if not layers:
        raise ValueError("the model has no gated layers")
    return torch.stack([layer.expected_active_weights() / layer.weight.numel() for _, layer in layers])


@full_precision
def expected_model_density(model: nn.Module) -> torch.Tensor:
    """``rho_model``: expected active weights over all weights of the gated layers, differentiable."""
    layers = gated_layers(model)
    if not layers:
        raise ValueError("the model has no gated layers")
    active = torch.stack([layer.expected_active_weights() for _, layer in layers]).sum()
    return active / sum(layer.weight.numel() for _, layer in layers)


def weight_counts(model: nn.Module) -> dict[str, int]:
    """``N_l`` of every gated layer."""
    return {name: layer.weight.numel() for name, layer in gated_layers(model)}


@torch.no_grad()
def deterministic_gate_densities(model: nn.Module) -> dict[str, float]:
    """Fraction of each gated layer's weights whose deterministic test gate is non-zero, plus ``model``."""
    layers = gated_layers(model)
    densities = {name: layer.test_active_weights() / layer.weight.numel() for name, layer in layers}
    total = sum(layer.weight.numel() for _, layer in layers)
    densities["model"] = sum(layer.test_active_weights() for _, layer in layers) / total
    return densities


@full_precision
def expected_l2(model: nn.Module, divide_gated_convs: bool = False) -> torch.Tensor:
    """``sum ||w||^2`` over every parameter except gates, gated weights weighted by detached ``P(z != 0)``.

    Weight decay is applied through the loss (``0.5 * weight_decay * expected_l2``), as the authors
    do, so that gated weights decay in proportion to how likely they are to be used.

    ``divide_gated_convs``: divide each gated convolution's term by ``1 - droprate_init``, Louizos et
    al.'s rule (same a-priori length scale as the dropout network). The 2022 authors construct their
    gated convolutions with that coefficient, but their model multiplies every layer's L2 term by
    the one model-level weight decay (``BaseL0Model.regularization``), so in the runs behind their
    tables it has no effect.
    """
    handled: set[int] = set()
    terms: list[torch.Tensor] = []
    for _, layer in gated_layers(model):
        term = layer.expected_l2()
        if divide_gated_convs and isinstance(layer, GatedConv2d):
            term = term / (1.0 - layer.gate.droprate_init)
        terms.append(term)
        handled.update(id(p) for p in (layer.weight, layer.bias, layer.gate.log_alpha) if p is not None)
    terms.extend(p.pow(2).sum() for p in model.parameters() if id(p) not in handled)
    return torch.stack(terms).sum()
