"""Kept weights: how many weights the purged model keeps, in expectation over the gates or for the test gates.

The platform's ``density`` is measured on the purged model: a layer keeps the rows of its alive
outputs and the columns of its alive inputs (``purge.py``), and whether a unit is alive depends on
the gates of the layer itself, of the layer before it (a channel switched off is zero) and of every
layer after it (an output that nobody reads is dropped, and a layer none of whose outputs is alive
reads nothing). Counting gates alone (``density.py``) misses this cascade, so a constraint on the
share of open gates lands the deployed model far under its target.

``KeptWeights`` replays the purge's rules with probabilities in place of masks. With the gates
independent, for each activation of a chain (``chains.py``) it tracks

* ``a[u] = P(unit u may be non-zero)`` (forward: a structured conv or gated BatchNorm sets it to
  its gate's ``P(z != 0)``, a Linear or plain BatchNorm to 1, pointwise modules pass it on, Flatten
  repeats it over positions),
* ``needed[u] = S and R[u]`` (backward): ``S`` one event shared by the whole activation ("the next
  weighted layer has an alive output"), ``R[u]`` independent per unit (the next Linear's input gate,
  any of a channel's positions after a Flatten, a gated BatchNorm's gate times what it passes on),

so that ``P(alive[u]) = P(S) a[u] P(R[u])``. A weighted layer keeps ``|alive out| x |alive in|``
weights (times its kernel size, or summed over its own per-weight gates when unstructured), and
since its inputs are read only when some output is alive, the shared event of its input side is
implied by a non-empty output side: the expectation factorises exactly into
``sum_v P(alive_out[v]) * sum_u a_in[u] P(R_in[u])``. The count is exact for the purge's rules, as
a Monte-Carlo average of purged models with sampled gates confirms (tests), and differentiable in
``log_alpha``. Layers outside chains (ResNet stems, shortcuts, classifiers) are kept whole.

Given the test gates' 0/1 masks instead of probabilities the same arithmetic counts the weights
the purged model keeps (``deployed=True``), without building it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from consparse.compress.count import sparsifiable_layers
from consparse.gates.batchnorm import GatedBatchNorm2d
from consparse.gates.chains import POINTWISE, find_chains
from consparse.gates.hard_concrete import HardConcreteGate
from consparse.gates.layers import GatedConv2d, GatedLayer, GatedLinear
from consparse.gates.purge import output_size
from consparse.precision import full_precision

# What a gate contributes: P(z != 0) under its training distribution, or its test gate's 0/1 mask.
GateProbability = Callable[[HardConcreteGate], torch.Tensor]


def _expected(gate: HardConcreteGate) -> torch.Tensor:
    return gate.prob_active()


def _deployed(gate: HardConcreteGate) -> torch.Tensor:
    return (gate.test_gate() > 0).to(gate.log_alpha.dtype)


@dataclass(frozen=True)
class _Step:
    name: str  # the module's path (the sparsifiable layer's name for weighted modules)
    module: nn.Module
    size_in: int
    size_out: int
    spatial: int = 1  # H*W of a Flatten's input


def _input_shapes(model: nn.Module, paths: Sequence[str], input_shape: Sequence[int]) -> dict[str, tuple]:
    """Input shape of the modules at ``paths``, traced on a meta-device copy (no compute)."""
    tracer = copy.deepcopy(model).to("meta")
    shapes: dict[str, tuple] = {}

    def recorder(path: str):
        def record(_module: nn.Module, inputs: tuple) -> None:  # returns None: the inputs stay as they are
            shapes.setdefault(path, tuple(inputs[0].shape))
        return record

    for path in dict.fromkeys(paths):
        tracer.get_submodule(path).register_forward_pre_hook(recorder(path))
    with torch.no_grad():
        tracer(torch.zeros(1, *[int(d) for d in input_shape], device="meta"))
    return shapes


class KeptWeights:
    """The purge's structure of a gated model, to count the weights each sparsifiable layer keeps.

    Args:
        model: a model gated by ``gate_model`` (its modules are referenced, not copied: build this
            once, after gating, and call it every step).
        input_shape: one input's shape (no batch dimension), to trace spatial sizes.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        chains = find_chains(model)
        flattens = [chain.slot_path(slot) for chain in chains for slot in chain.slots
                    if isinstance(chain.module(slot), nn.Flatten)]
        firsts = [chain.slot_path(chain.slots[0]) for chain in chains]
        shapes = _input_shapes(model, [*firsts, *flattens], input_shape)
        self.chains: list[list[_Step]] = []
        in_chains: set[int] = set()
        for chain, first in zip(chains, firsts):
            steps, size = [], shapes[first][1]
            for slot in chain.slots:
                module, path = chain.module(slot), chain.slot_path(slot)
                spatial = math.prod(shapes[path][2:]) if isinstance(module, nn.Flatten) else 1
                steps.append(_Step(path, module, size, output_size(module, size, spatial), spatial))
                size = steps[-1].size_out
                in_chains.add(id(module))
            self.chains.append(steps)
        self.layer_sizes = {name: layer.weight.numel() for name, layer in sparsifiable_layers(model)}
        self.fixed = {name: layer.weight.numel() for name, layer in sparsifiable_layers(model)
                      if id(layer) not in in_chains}
        self.total = sum(self.layer_sizes.values())

    @full_precision
    def per_layer(self, deployed: bool = False) -> dict[str, torch.Tensor]:
        """``{sparsifiable layer name: kept weights}``: expected (differentiable), or for the test gates."""
        probability = _deployed if deployed else _expected
        counts: dict[str, torch.Tensor] = {}
        for steps in self.chains:
            counts.update(_chain_counts(steps, probability))
        device = next(iter(counts.values())).device if counts else torch.device("cpu")
        for name, size in self.fixed.items():
            counts[name] = torch.tensor(float(size), device=device)
        return {name: counts[name] for name in self.layer_sizes}

    def model_density(self, deployed: bool = False) -> torch.Tensor:
        """Kept weights over the dense model's sparsifiable weights: the platform's ``density``."""
        return torch.stack(list(self.per_layer(deployed).values())).sum() / self.total

    def layer_densities(self, names: Sequence[str], deployed: bool = False) -> torch.Tensor:
        """Kept share of each named layer's weights (in the order of ``names``)."""
        counts = self.per_layer(deployed)
        return torch.stack([counts[name] / self.layer_sizes[name] for name in names])


def _forward_nonzero(steps: list[_Step], probability: GateProbability, device: torch.device) -> list[torch.Tensor]:
    """``a``: P(unit may be non-zero) of every activation (index 0 is the chain's input)."""
    nonzero = [torch.ones(steps[0].size_in, device=device)]
    for step in steps:
        module = step.module
        gates_its_outputs = isinstance(module, GatedBatchNorm2d) or (
            isinstance(module, GatedConv2d) and module.structured and not module.gate_applied_by_norm)
        if gates_its_outputs:
            nonzero.append(probability(module.gate))
        elif isinstance(module, POINTWISE):
            nonzero.append(nonzero[-1])
        elif isinstance(module, nn.Flatten):
            nonzero.append(nonzero[-1].repeat_interleave(step.spatial))
        else:
            nonzero.append(torch.ones(step.size_out, device=device))
    return nonzero


def _weighted_count(module: nn.Module, rows: torch.Tensor, cols: torch.Tensor,
                    probability: GateProbability) -> torch.Tensor:
    """Expected kept weights of a Linear / Conv given P(alive) of its rows and of its columns."""
    weight = module.weight
    if isinstance(module, GatedLayer) and not module.structured:
        per_weight = probability(module.gate).reshape(weight.shape[0], weight.shape[1], -1).sum(dim=2)
        return rows @ per_weight @ cols
    kernel = weight[0, 0].numel()
    return rows.sum() * cols.sum() * kernel


def _chain_counts(steps: list[_Step], probability: GateProbability) -> dict[str, torch.Tensor]:
    device = next(step.module.weight.device for step in steps if isinstance(step.module, (nn.Linear, nn.Conv2d)))
    nonzero = _forward_nonzero(steps, probability, device)
    shared = torch.ones((), device=device)  # P(S) of the current activation
    independent = torch.ones(steps[-1].size_out, device=device)  # P(R[u])
    counts: dict[str, torch.Tensor] = {}
    for index in range(len(steps) - 1, -1, -1):
        module, a_out = steps[index].module, nonzero[index + 1]
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            rows = shared * a_out * independent
            own = (probability(module.gate) if isinstance(module, GatedLinear) and module.structured
                   else torch.ones(steps[index].size_in, device=device))
            counts[steps[index].name] = _weighted_count(module, rows, nonzero[index] * own, probability)
            # The layer reads its inputs only if one of its outputs is alive.
            shared = shared * (1.0 - torch.prod(1.0 - a_out * independent))
            independent = own
        elif isinstance(module, nn.Flatten):
            independent = 1.0 - torch.prod(1.0 - independent.view(steps[index].size_in, -1), dim=1)
        elif not isinstance(module, POINTWISE):
            # A norm passes on what it outputs: its own non-zero units (a gated BatchNorm's gate).
            independent = a_out * independent
    return counts
