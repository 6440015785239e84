"""Which parameter of a model gets which constraint set, and how big: the SFW param groups of a model.

Every trainable parameter has a *tensor kind*:

=============  =====================================================================
``conv``       weight of a convolution
``linear``     weight of a Linear layer
``bias``       bias of a convolution or Linear layer
``batchnorm``  weight and bias of a normalisation layer (BatchNorm, GroupNorm, LayerNorm)
``other``      any other parameter
=============  =====================================================================

The ``table`` maps each kind to a set (``l1, l2, linf, ksparse, ksupport, group_ksupport, nuclear,
spectral_ksupport``), to ``same`` (the main ``kind``) or to ``none`` (unconstrained: a momentum-SGD
group). Each set is sized per tensor (``scope: layer``) or, for the tensors that get the main kind,
as one set over all of them (``scope: global``):

* ``mode: radius``: ``value`` is the radius of every set;
* ``mode: diameter``: ``value`` is the L2 diameter of every set;
* ``mode: initialization``: the L2 diameter is ``2 * value * E||theta_init||`` (per tensor; globally
  ``sqrt(sum_l E||theta_l,init||^2)``), the SFW authors' choice.

``k`` (k-sparse, k-support, group and spectral sets) is a fraction in (0, 1] of the entries /
groups / maximal rank of each set, or an absolute count > 1; when it is null it follows the target
density (the fraction of weights the deployed model keeps). ``nm`` (the ``nm`` set) is the pattern
``"N:M"``: at most N non-zeros in every M consecutive input weights (``consparse.nm_pattern``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from consparse.errors import ParameterError
from consparse.nm_pattern import NMPattern, parse_nm
from consparse.optim.constraints.base import ConstraintSet
from consparse.optim.constraints.group import GroupKSupportNormBall
from consparse.optim.constraints.init_norm import expected_init_norms
from consparse.optim.constraints.ksparse import KSparsePolytope
from consparse.optim.constraints.ksupport import KSupportNormBall
from consparse.optim.constraints.lp import LpBall
from consparse.optim.constraints.nm import NMSparsePolytope
from consparse.optim.constraints.spectral import NuclearNormBall, SpectralKSupportNormBall
from consparse.validation import check_choice, check_int, check_range, settings_from

TENSOR_KINDS = ("conv", "linear", "bias", "batchnorm", "other")
SET_KINDS = ("l1", "l2", "linf", "ksparse", "ksupport", "group_ksupport", "nuclear", "spectral_ksupport", "nm")
SAME = "same"
UNCONSTRAINED = "none"
SCOPES = ("layer", "global")
MODES = ("radius", "diameter", "initialization")

# Sets that need k, and sets that exist only per tensor (a matrix view of one weight).
K_SETS = ("ksparse", "ksupport", "group_ksupport", "spectral_ksupport")
PER_TENSOR_SETS = ("nuclear", "spectral_ksupport", "nm")

DEFAULT_TABLE = {"conv": SAME, "linear": SAME, "bias": "l2", "batchnorm": "l2", "other": "l2"}

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass
class ConstraintSpec:
    """The ``method.constraint`` config node (see the module docstring); validated on construction."""

    kind: str = "ksupport"
    k: float | int | None = None
    scope: str = "layer"
    mode: str = "initialization"
    value: float = 30.0
    init_norm_samples: int = 10
    init_norm_seed: int = 0
    svd_iterations: int = 1
    table: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TABLE))
    nm: str | NMPattern = "2:4"

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, SET_KINDS)
        check_choice("scope", self.scope, SCOPES)
        check_choice("mode", self.mode, MODES)
        check_range("value", self.value, 0.0, low_inclusive=False)
        check_int("init_norm_samples", self.init_norm_samples, 1)
        check_int("init_norm_seed", self.init_norm_seed, 0)
        check_int("svd_iterations", self.svd_iterations, 1)
        if self.k is not None:
            check_range("k", self.k, 0.0, low_inclusive=False)
            if self.k > 1 and float(self.k) != int(self.k):
                raise ParameterError(
                    "k", f"got {self.k!r}; allowed: a fraction in (0, 1] or a whole count > 1"
                )
        table = dict(DEFAULT_TABLE)
        for key, value in dict(self.table or {}).items():
            check_choice("table", key, TENSOR_KINDS)
            check_choice(f"table.{key}", value, (*SET_KINDS, SAME, UNCONSTRAINED))
            table[key] = value
        self.table = table
        self.nm = parse_nm(self.nm, "nm")
        if self.scope == "global" and self.kind in PER_TENSOR_SETS:
            raise ParameterError(
                "scope",
                f"'{self.kind}' is a set of one weight matrix; use scope=layer, or a vector set "
                f"({', '.join(k for k in SET_KINDS if k not in PER_TENSOR_SETS)}) with scope=global",
            )

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> ConstraintSpec:
        """The spec from a config mapping; unknown keys are a ParameterError naming the allowed ones."""
        return settings_from(cls, node)

    def set_for(self, tensor_kind: str) -> str:
        """The set kind (or ``none``) the table gives to a tensor kind."""
        choice = self.table[tensor_kind]
        return self.kind if choice == SAME else choice

    def resolved_k(self, target_density: float | None) -> float | int | None:
        """``k``, or the target density when k is null; ParameterError if a k-set is used without either."""
        if self.k is not None:
            return self.k
        if target_density is not None:
            return target_density
        used = sorted({self.set_for(kind) for kind in TENSOR_KINDS} & set(K_SETS))
        if used:
            raise ParameterError(
                "k",
                f"the sets {used} need k (a fraction in (0, 1] or a count > 1); set method.constraint.k "
                "or method.target_density (k then follows the target)",
            )
        return None


@dataclass
class ConstrainedGroup:
    """One optimiser param group: its tensors (with their names) and its set (None: unconstrained)."""

    name: str
    parameter_names: list[str]
    parameters: list[nn.Parameter]
    constraint: ConstraintSet | None

    def as_param_group(self) -> dict[str, Any]:
        return {"params": self.parameters, "constraint": self.constraint, "name": self.name}


def tensor_kind(module: nn.Module, parameter_name: str) -> str:
    """The table row of a module's own parameter (see the module docstring)."""
    if isinstance(module, _NORM_LAYERS):
        return "batchnorm"
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        if parameter_name == "weight":
            return "linear" if isinstance(module, nn.Linear) else "conv"
        if parameter_name == "bias":
            return "bias"
    return "other"


def classify_parameters(model: nn.Module) -> list[tuple[str, str, nn.Parameter]]:
    """``(name, tensor kind, parameter)`` of every trainable parameter, once each, in module order."""
    seen: set[int] = set()
    rows: list[tuple[str, str, nn.Parameter]] = []
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad or id(parameter) in seen:
                continue
            seen.add(id(parameter))
            rows.append(
                (f"{module_name}.{name}" if module_name else name, tensor_kind(module, name), parameter)
            )
    return rows


def _set_class_and_options(
    kind: str, k: float | None, svd_iterations: int, nm: str | NMPattern
) -> tuple[type[ConstraintSet], dict[str, Any]]:
    if kind in ("l1", "l2", "linf"):
        return LpBall, {"p": {"l1": 1.0, "l2": 2.0, "linf": math.inf}[kind]}
    if kind == "ksparse":
        return KSparsePolytope, {"k": k}
    if kind == "ksupport":
        return KSupportNormBall, {"k": k}
    if kind == "group_ksupport":
        return GroupKSupportNormBall, {"k": k}
    if kind == "nm":
        return NMSparsePolytope, {"nm": nm}
    if kind == "nuclear":
        return NuclearNormBall, {"svd_iterations": svd_iterations}
    return SpectralKSupportNormBall, {"k": k, "svd_iterations": svd_iterations}


def _sized_set(
    spec: ConstraintSpec, kind: str, k: float | None, shape: torch.Size, init_norm: float, **extra: Any
) -> ConstraintSet:
    cls, options = _set_class_and_options(kind, k, spec.svd_iterations, spec.nm)
    options.update(extra)
    if spec.mode == "radius":
        return cls(shape, spec.value, **options)
    diameter = spec.value if spec.mode == "diameter" else 2.0 * spec.value * init_norm
    return cls.from_diameter(shape, diameter, **options)


def build_model_constraints(
    model: nn.Module, spec: ConstraintSpec, target_density: float | None = None
) -> list[ConstrainedGroup]:
    """The param groups of ``model`` under ``spec``: constrained groups first, then one unconstrained group.

    The model is not modified (initial norms come from throw-away copies); make the start feasible
    with ``FrankWolfe.make_feasible_`` once the optimiser exists.
    """
    k = spec.resolved_k(target_density)
    rows = classify_parameters(model)
    init_norms = (
        expected_init_norms(model, spec.init_norm_samples, spec.init_norm_seed)
        if spec.mode == "initialization"
        else {}
    )
    groups: list[ConstrainedGroup] = []
    pooled: list[tuple[str, nn.Parameter]] = []
    unconstrained: list[tuple[str, nn.Parameter]] = []
    for name, kind, parameter in rows:
        set_kind = spec.set_for(kind)
        if set_kind == UNCONSTRAINED:
            unconstrained.append((name, parameter))
        elif spec.scope == "global" and set_kind == spec.kind:
            pooled.append((name, parameter))
        else:
            constraint = _sized_set(spec, set_kind, k, parameter.shape, init_norms.get(name, 0.0))
            groups.append(ConstrainedGroup(name, [name], [parameter], constraint))
    if pooled:
        groups.insert(0, _global_group(spec, k, pooled, init_norms))
    if unconstrained:
        groups.append(
            ConstrainedGroup(
                "unconstrained", [n for n, _ in unconstrained], [p for _, p in unconstrained], None
            )
        )
    return groups


def _global_group(
    spec: ConstraintSpec,
    k: float | None,
    pooled: list[tuple[str, nn.Parameter]],
    init_norms: dict[str, float],
) -> ConstrainedGroup:
    """One set over the concatenation of the pooled tensors (k relative to the total)."""
    total = sum(p.numel() for _, p in pooled)
    init_norm = math.sqrt(sum(init_norms.get(name, 0.0) ** 2 for name, _ in pooled))
    extra: dict[str, Any] = {}
    if spec.kind == "group_ksupport":
        sizes: list[int] = []
        for name, parameter in pooled:
            GroupKSupportNormBall.check_groups(parameter.shape, None)
            sizes += [parameter.numel() // parameter.shape[0]] * parameter.shape[0]
        extra["group_sizes"] = sizes
    constraint = _sized_set(spec, spec.kind, k, torch.Size([total]), init_norm, **extra)
    return ConstrainedGroup(f"global_{spec.kind}", [n for n, _ in pooled], [p for _, p in pooled], constraint)
