"""Counting: which weights a density is measured on, densities, parameters and MACs.

Sparsifiable weights are the ``weight`` of every Linear and convolution, except inside a module that
defines its own ``sparsifiable_weights()`` (the implicit model returns ``A, B, C, D``): that module
speaks for its whole subtree. Every method, pruning routine and report uses these definitions.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate; its
matmul and convolution formulas count multiplications only, so bias additions are not MACs). For
unstructured sparsity a layer's MACs are scaled by the nonzero fraction of its weight.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Layers whose ``weight`` is sparsifiable (every conv dimensionality, transposed ones included).
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def owns_sparsifiable_weights(module: nn.Module) -> bool:
    """True for a module that says itself which of its subtree's tensors are sparsifiable."""
    return callable(getattr(module, "sparsifiable_weights", None))


def _walk(module: nn.Module, prefix: str, seen: set[int]) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` order, but a module that owns its sparsifiable weights hides its subtree."""
    if id(module) in seen:
        return
    seen.add(id(module))
    yield prefix, module
    if owns_sparsifiable_weights(module):
        return
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}.{name}" if prefix else name, seen)


def sparsifiable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Linear / conv layer whose weight is sparsifiable, in module order.

    Layers inside a module that defines ``sparsifiable_weights()`` are not listed (that module
    decides what is sparsifiable in its subtree).
    """
    return [
        (name, module)
        for name, module in _walk(model, "", set())
        if isinstance(module, WEIGHT_LAYERS)
        and not owns_sparsifiable_weights(module)
        and module.weight is not None
    ]


def sparsifiable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module>.weight": tensor}`` of the weights a density is measured on, in module order.

    A module defining ``sparsifiable_weights()`` contributes its own dict, with its module name
    prepended to each key. The tensors are the model's own (not copies).
    """
    weights: dict[str, torch.Tensor] = {}
    for name, module in _walk(model, "", set()):
        if owns_sparsifiable_weights(module):
            for key, tensor in module.sparsifiable_weights().items():
                weights[f"{name}.{key}" if name else key] = tensor
        elif isinstance(module, WEIGHT_LAYERS) and module.weight is not None:
            weights[f"{name}.weight" if name else "weight"] = module.weight
    return weights


def nonzero_count(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> int:
    """Number of nonzero entries over all tensors (a mapping counts its values)."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return sum(int(torch.count_nonzero(t.detach())) for t in values)


def numel_count(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> int:
    """Number of entries over all tensors (a mapping counts its values)."""
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    return sum(t.numel() for t in values)


def density(model: nn.Module, reference: nn.Module) -> float:
    """Nonzero sparsifiable weights of ``model`` / sparsifiable weights of the dense ``reference``."""
    total = numel_count(sparsifiable_weights(reference))
    if total == 0:
        raise ValueError(f"the reference model ({type(reference).__name__}) has no sparsifiable weights")
    return nonzero_count(sparsifiable_weights(model)) / total


def per_layer_density(model: nn.Module, reference: nn.Module | None = None) -> dict[str, float]:
    """``{name: nnz / numel}`` per sparsifiable tensor.

    The denominator is the same-named tensor of ``reference`` when it has one (so a purged layer
    reports its density against the dense layer), otherwise the tensor itself.
    """
    reference_weights = sparsifiable_weights(reference) if reference is not None else {}
    densities: dict[str, float] = {}
    for name, tensor in sparsifiable_weights(model).items():
        denominator = reference_weights[name].numel() if name in reference_weights else tensor.numel()
        densities[name] = nonzero_count([tensor]) / denominator if denominator else 0.0
    return densities


def count_params(model: nn.Module, nonzero_only: bool = False) -> int:
    """All parameters of ``model`` (each shared tensor once); ``nonzero_only`` counts nonzero entries."""
    params = list(model.parameters())
    return nonzero_count(params) if nonzero_only else numel_count(params)


def _counts_itself(module: nn.Module) -> bool:
    return callable(getattr(module, "macs_per_sample", None))


def _self_counted_macs(module: nn.Module, sparse: bool) -> int:
    method = module.macs_per_sample
    if "sparse" in inspect.signature(method).parameters:
        return int(method(sparse=sparse))
    return int(method())


def _macs_targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose FlopCounter count is corrected: self-counting modules and Linear/conv layers."""
    targets: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if _counts_itself(module) or isinstance(module, WEIGHT_LAYERS):
            targets.append((prefix, module))
            return  # a counted module's subtree is included in its own count
        for name, child in module.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return targets


def _nonzero_fraction(layer: nn.Module) -> Fraction:
    """Nonzero fraction of a layer's weight, or of what it declares sparsifiable (e.g. a gated layer)."""
    tensors = (
        list(layer.sparsifiable_weights().values()) if owns_sparsifiable_weights(layer) else [layer.weight]
    )
    total = numel_count(tensors)
    return Fraction(nonzero_count(tensors), total) if total else Fraction(1)


@dataclass
class MacsBreakdown:
    """MACs per sample: ``total`` and the corrected count of each Linear/conv/self-counting module."""

    total: int
    per_module: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FlopProfile:
    """What the FlopCounter measured on one sample: the total and, per counted module (by name), its
    FLOPs and calls. It depends on the model's structure and the input shape only, so a copy that
    differs in weight values alone (a pruned copy) has the same profile."""

    total: int
    module_flops: dict[str, int]
    module_calls: dict[str, int]


def flop_profile(model: nn.Module, input_shape: Sequence[int]) -> FlopProfile:
    """The ``FlopProfile`` of ``model`` on one input of ``input_shape``, on an eval-mode CPU copy.

    Per-module FLOPs are attributed with forward hooks that read the counter's running total
    before and after each call, rather than from ``get_flop_counts()``'s name keys: those keys come
    from torch's ModuleTracker, which names a module instance registered under several paths by
    whichever path it met last; the hooks attribute by instance and sum repeated calls.
    """
    return _profile_copy(copy.deepcopy(model).cpu().eval(), input_shape)


def _profile_copy(counted: nn.Module, input_shape: Sequence[int]) -> FlopProfile:
    targets = _macs_targets(counted)
    flops: dict[int, int] = {id(module): 0 for _, module in targets}
    calls: dict[int, int] = {id(module): 0 for _, module in targets}
    starts: dict[int, list[int]] = {id(module): [] for _, module in targets}
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, *[int(d) for d in input_shape], generator=generator)
    counter = FlopCounterMode(display=False)

    def before(module: nn.Module, _inputs: Any) -> None:
        starts[id(module)].append(counter.get_total_flops())

    def after(module: nn.Module, _inputs: Any, _output: Any) -> None:
        flops[id(module)] += counter.get_total_flops() - starts[id(module)].pop()
        calls[id(module)] += 1

    handles = []
    for _, module in targets:
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    try:
        with torch.no_grad(), counter:
            counted(sample)
    finally:
        for handle in handles:
            handle.remove()
    return FlopProfile(
        total=counter.get_total_flops(),
        module_flops={name: flops[id(module)] for name, module in targets},
        module_calls={name: calls[id(module)] for name, module in targets},
    )


def count_macs_breakdown(
    model: nn.Module, input_shape: Sequence[int], sparse: bool = True, profile: FlopProfile | None = None
) -> MacsBreakdown:
    """MACs per sample of ``model`` on one input of ``input_shape`` (no batch dimension).

    The model is copied to the CPU in eval mode (the input model is left untouched). A module
    defining ``macs_per_sample()`` is counted by that method (once per call; it may accept a
    ``sparse`` keyword) instead of by the FlopCounter. With ``sparse``, each Linear/conv layer's
    MACs are scaled by the nonzero fraction of its weight.

    ``profile``, the ``flop_profile`` of a model of the same structure (e.g. the model a pruned
    copy came from), spares the copy and the counter's forward pass; it is not used for a model
    with self-counting modules, whose count may depend on their latest forward pass.
    """
    targets = _macs_targets(model)
    if profile is None or any(_counts_itself(module) for _, module in targets):
        counted = copy.deepcopy(model).cpu().eval()
        targets = _macs_targets(counted)
        profile = _profile_copy(counted, input_shape)
    # Work in FLOPs (exact integers / fractions) and halve once at the end.
    total = Fraction(profile.total)
    per_module: dict[str, int] = {}
    for name, module in targets:
        measured = profile.module_flops[name]
        if _counts_itself(module):
            corrected = Fraction(2 * _self_counted_macs(module, sparse) * profile.module_calls[name])
        elif sparse:
            corrected = measured * _nonzero_fraction(module)
        else:
            corrected = Fraction(measured)
        total += corrected - measured
        per_module[name or type(module).__name__] = round(corrected / 2)
    return MacsBreakdown(total=round(total / 2), per_module=per_module)


def count_macs(
    model: nn.Module, input_shape: Sequence[int], sparse: bool = True, profile: FlopProfile | None = None
) -> int:
    """Multiply-accumulates per sample (see ``count_macs_breakdown``)."""
    return count_macs_breakdown(model, input_shape, sparse=sparse, profile=profile).total


@dataclass
class ModelStats:
    """What results.json reports about a deployed model and its dense reference.

    ``params`` counts nonzero parameters of the model (all parameters, not only sparsifiable ones),
    ``params_total`` all its entries (the structural size), ``macs`` its sparse-scaled MACs;
    ``dense_params`` and ``dense_macs`` are the reference's, counted dense.
    """

    density: float
    per_layer_density: dict[str, float]
    params: int
    params_total: int
    macs: int
    dense_params: int
    dense_macs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_stats(model: nn.Module, input_shape: Sequence[int], reference: nn.Module) -> ModelStats:
    """Density, per-layer density, params and MACs of ``model`` against the dense ``reference``."""
    return ModelStats(
        density=density(model, reference),
        per_layer_density=per_layer_density(model, reference),
        params=count_params(model, nonzero_only=True),
        params_total=count_params(model),
        macs=count_macs(model, input_shape, sparse=True),
        dense_params=count_params(reference),
        dense_macs=count_macs(reference, input_shape, sparse=False),
    )
