"""Purging: the smaller plain-PyTorch model that computes what a gated model computes in eval mode.

For each chain (``chains.py``) the purge finds which units (features or channels) of every
activation are **alive**: possibly non-zero (forward: a channel whose test gate is 0 is exactly
zero) and used downstream (backward: an input neuron whose gate is 0 is never read, and so is an
output that no later layer reads). Each Linear / Conv2d / BatchNorm keeps its alive inputs and
outputs, with the fractional test gates folded into the kept weights; pointwise modules (ReLU,
pooling, Dropout) stay. Where a layer reads a subset of what arrives (pixels of the input, or
spatial positions after a Flatten), an ``IndexSelect`` picks them; where a residual branch loses
output channels, a ``ChannelScatter`` puts the kept ones back at their place in the full width, so
residual additions keep their width. The purged model has the gated model's classes (MLP, LeNet5,
torchvision ResNet, WideResNet) with sliced layers, so the shared export can describe it.

Unstructured gates are only folded into the weights (no shape changes).

Written here rather than with a dependency-graph pruner (torch-pruning): those prune a residual
stream across blocks, while the L0 purge keeps residual widths and slices only inside branches,
and the structure here is known from the chains.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from consparse.compress.layers import ChannelScatter, IndexSelect
from consparse.gates.batchnorm import GatedBatchNorm2d
from consparse.gates.chains import NORMS, POINTWISE, Chain, find_chains
from consparse.gates.convert import folded_parameters, gated_layers
from consparse.gates.layers import GatedConv2d, GatedLayer, GatedLinear


@dataclass
class _Element:
    slot: str
    module: nn.Module
    spatial: int = 1  # H*W of a Flatten's input


def _ones(size: int, device: torch.device) -> torch.Tensor:
    return torch.ones(size, dtype=torch.bool, device=device)


def _gate_mask(layer: GatedLayer | GatedBatchNorm2d) -> torch.Tensor:
    return layer.gate.test_gate() > 0


def output_size(module: nn.Module, size: int, spatial: int) -> int:
    """The features a chain element passes on, given ``size`` in (``spatial``: H*W of a Flatten's input)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Flatten):
        return size * spatial
    return size


def _nonzero_out(module: nn.Module, nonzero_in: torch.Tensor, size_out: int, spatial: int) -> torch.Tensor:
    """Units of the module's output that may be non-zero, given those of its input."""
    device = nonzero_in.device
    if isinstance(module, GatedConv2d) and module.structured and not module.gate_applied_by_norm:
        return _gate_mask(module)
    if isinstance(module, GatedBatchNorm2d):
        return _gate_mask(module)
    if isinstance(module, POINTWISE):
        return nonzero_in.clone()
    if isinstance(module, nn.Flatten):
        return nonzero_in.repeat_interleave(spatial)
    return _ones(size_out, device)


def _needed_in(module: nn.Module, alive_out: torch.Tensor, size_in: int) -> torch.Tensor:
    """Units of the module's input that it reads, given which of its outputs are alive."""
    device = alive_out.device
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        if not bool(alive_out.any()):
            return torch.zeros(size_in, dtype=torch.bool, device=device)
        if isinstance(module, GatedLinear) and module.structured:
            return _gate_mask(module)
        return _ones(size_in, device)
    if isinstance(module, nn.Flatten):
        return alive_out.view(size_in, -1).any(dim=1)
    return alive_out.clone()


def _sliced_linear(layer: nn.Linear, rows: torch.Tensor, cols: torch.Tensor) -> nn.Linear:
    weight, bias = folded_parameters(layer) if isinstance(layer, GatedLayer) else (layer.weight, layer.bias)
    sliced = nn.Linear(len(cols), len(rows), bias=bias is not None, device="meta").to_empty(device=weight.device)
    with torch.no_grad():
        sliced.weight.copy_(weight[rows][:, cols])
        if bias is not None:
            sliced.bias.copy_(bias[rows])
    return sliced


def _sliced_conv(conv: nn.Conv2d, rows: torch.Tensor, cols: torch.Tensor) -> nn.Conv2d:
    if conv.groups != 1:
        raise ValueError(f"purge: grouped convolutions (groups={conv.groups}) are not supported")
    weight, bias = folded_parameters(conv) if isinstance(conv, GatedLayer) else (conv.weight, conv.bias)
    sliced = nn.Conv2d(len(cols), len(rows), conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, bias=bias is not None, padding_mode=conv.padding_mode,
                       device="meta").to_empty(device=weight.device)
    with torch.no_grad():
        sliced.weight.copy_(weight[rows][:, cols])
        if bias is not None:
            sliced.bias.copy_(bias[rows])
    return sliced


def _sliced_norm(norm: nn.modules.batchnorm._BatchNorm, channels: torch.Tensor) -> nn.Module:
    kind = nn.BatchNorm2d if isinstance(norm, nn.BatchNorm2d) else nn.BatchNorm1d
    sliced = kind(len(channels), eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                  track_running_stats=norm.track_running_stats, device="meta")
    sliced = sliced.to_empty(device=next(iter([*norm.parameters(), *norm.buffers()])).device)
    weight, bias = folded_parameters(norm) if isinstance(norm, GatedBatchNorm2d) else (norm.weight, norm.bias)
    with torch.no_grad():
        if norm.affine:
            sliced.weight.copy_(weight[channels])
            sliced.bias.copy_(bias[channels])
        if norm.track_running_stats:
            sliced.running_mean.copy_(norm.running_mean[channels])
            sliced.running_var.copy_(norm.running_var[channels])
            sliced.num_batches_tracked.copy_(norm.num_batches_tracked)
    return sliced.train(norm.training)


def _positions(delivered: torch.Tensor, wanted: torch.Tensor, where: str) -> torch.Tensor | None:
    """Positions of ``wanted`` within ``delivered`` (None when they are the same units)."""
    if torch.equal(delivered, wanted):
        return None
    positions = torch.searchsorted(delivered, wanted)
    if len(wanted) and (bool((positions >= len(delivered)).any()) or not torch.equal(delivered[positions], wanted)):
        raise ValueError(f"purge: {where} needs units its input no longer carries")
    return positions


def _purge_chain(chain: Chain, input_size: int, spatial: dict[int, int]) -> None:
    elements = [_Element(slot, chain.module(slot), spatial.get(id(chain.module(slot)), 1)) for slot in chain.slots]
    device = next(iter(chain.owner.parameters())).device
    sizes = [input_size]
    for element in elements:
        sizes.append(output_size(element.module, sizes[-1], element.spatial))
    nonzero = [_ones(input_size, device)]
    for index, element in enumerate(elements):
        nonzero.append(_nonzero_out(element.module, nonzero[-1], sizes[index + 1], element.spatial))
    needed = [_ones(sizes[-1], device)]
    for index in range(len(elements) - 1, -1, -1):
        alive_out = nonzero[index + 1] & needed[0]
        needed.insert(0, _needed_in(elements[index].module, alive_out, sizes[index]))
    alive = [(n & k).nonzero().flatten() for n, k in zip(nonzero, needed)]

    replaced: dict[str, nn.Module] = {}
    delivered = torch.arange(input_size, device=device)
    for index, element in enumerate(elements):
        module, where = element.module, chain.slot_path(element.slot)
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            select = _positions(delivered, alive[index], where)
            sliced = (_sliced_linear if isinstance(module, nn.Linear) else _sliced_conv)(
                module, alive[index + 1], alive[index])
            replaced[element.slot] = sliced
            if select is not None:
                _insert_select(chain, elements, index, replaced, select)
            delivered = alive[index + 1]
        elif isinstance(module, NORMS):
            if _positions(delivered, alive[index + 1], where) is not None:
                raise ValueError(f"purge: {where} would need channels the layer before it dropped")
            replaced[element.slot] = _sliced_norm(module, delivered)
        elif isinstance(module, nn.Flatten):
            offsets = torch.arange(element.spatial, device=device)
            delivered = (delivered.unsqueeze(1) * element.spatial + offsets).flatten()
        elif not isinstance(module, POINTWISE):
            raise TypeError(f"purge: {where} is a {type(module).__name__}, not a chain element")
    if len(delivered) != sizes[-1]:
        last = elements[-1].slot
        replaced[last] = nn.Sequential(replaced.get(last, chain.module(last)), ChannelScatter(sizes[-1], delivered))
    for slot, module in replaced.items():
        setattr(chain.owner, slot, module)


def _insert_select(chain: Chain, elements: list[_Element], index: int, replaced: dict[str, nn.Module],
                   positions: torch.Tensor) -> None:
    """Put an IndexSelect before element ``index``: after the parameter-free module before it when
    that module is used once (so the weighted layer keeps its name), else in front of the layer."""
    select = IndexSelect(1, positions.cpu()).to(positions.device)
    before = elements[index - 1] if index > 0 else None
    if before is not None and not list(before.module.parameters()) and chain.slots.count(before.slot) == 1:
        replaced[before.slot] = nn.Sequential(replaced.get(before.slot, before.module), select)
    else:
        replaced[elements[index].slot] = nn.Sequential(select, replaced[elements[index].slot])


def _record_input_shapes(model: nn.Module, paths: Sequence[str], input_shape: Sequence[int]) -> dict[str, tuple]:
    """Input shape (of the first call) of the modules at ``paths``, traced on a meta-device copy (no compute)."""
    tracer = copy.deepcopy(model).to("meta")
    shapes: dict[str, tuple] = {}

    def recorder(path: str):
        def record(_module: nn.Module, inputs: tuple) -> None:
            shapes.setdefault(path, tuple(inputs[0].shape))
        return record

    for path in paths:
        tracer.get_submodule(path).register_forward_pre_hook(recorder(path))
    tracer(torch.zeros(1, *[int(d) for d in input_shape], device="meta"))
    return shapes


@torch.no_grad()
def purge(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """A plain copy of gated ``model`` (eval mode) without the units its test gates switch off.

    Args:
        model: a model gated by ``gate_model`` (left untouched).
        input_shape: one input's shape (no batch dimension), used to trace spatial sizes.
    """
    purged = copy.deepcopy(model).eval()
    chains = find_chains(purged)
    flattens = {chain.slot_path(slot): chain.module(slot) for chain in chains for slot in chain.slots
                if isinstance(chain.module(slot), nn.Flatten)}
    firsts = [chain.slot_path(chain.slots[0]) for chain in chains]
    shapes = _record_input_shapes(purged, [*firsts, *flattens], input_shape)
    spatial: dict[int, int] = {}
    for path, module in flattens.items():
        if module.start_dim != 1 or module.end_dim != -1:
            raise ValueError(f"purge: {path} flattens dims {module.start_dim}..{module.end_dim}; only 1..-1 is supported")
        spatial[id(module)] = math.prod(shapes[path][2:])
    for chain, first in zip(chains, firsts):
        _purge_chain(chain, shapes[first][1], spatial)
    leftover = [name for name, _ in gated_layers(purged)]
    leftover += [name for name, module in purged.named_modules() if isinstance(module, GatedBatchNorm2d)]
    if leftover:
        raise ValueError(f"purge: gated modules outside any chain cannot be purged: {leftover}")
    return purged
