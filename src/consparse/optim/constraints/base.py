"""The constraint-set seam of the Frank-Wolfe optimiser, and the helpers every set shares.

A constraint set ``C`` is a compact convex set around the origin for one parameter tensor (or for
several tensors flattened and concatenated, a "global" constraint). The optimiser knows nothing of
models; it only calls:

* ``lmo(grad) -> V``: the linear minimisation oracle ``argmin_{V in C} <grad, V>``, shaped like the
  parameter. Every LMO here maps a zero gradient to zero (so weights with no signal go to zero
  instead of to an arbitrary vertex) and is positively scale-invariant (only the direction of the
  gradient matters).
* ``norm(x)``: the gauge that defines the set, ``C = {x : norm(x) <= radius}``. A 0-dim tensor for
  a whole-tensor set; a per-row vector for a row-wise set (then ``radius`` is per row too).
* ``radius`` and ``diameter`` (the Euclidean diameter of ``C``, used by step-size rescaling).
* ``make_feasible(x)``: ``x`` rescaled towards the origin until it lies in ``C`` (not a Euclidean
  projection: rescaling keeps the support and the direction, as the SFW authors do).
* ``lmo_at(grad, x)``: the oracle the optimiser calls at the iterate ``x``; ``lmo(grad)`` unless the
  set restricts its oracle by the iterate (a row-wise set with a support budget).
* ``away_vertex(grad, x)`` (only where ``supports_away_steps``): the active atom of ``x`` with the
  largest ``<grad, a>`` and its weight in ``x``, for pairwise steps.

Each set converts between its radius and its L2 diameter (``radius_for_diameter``), which is how a
radius is sized from the norm of the initial weights (``D = 2 * value * E||theta_init||``).

Every set's oracles and norms run in full precision even inside ``torch.autocast``
(``consparse.precision``): each subclass's definitions of the methods in ``FULL_PRECISION_METHODS``
are wrapped when the class is created, so a new set cannot forget it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch

from consparse.errors import ParameterError
from consparse.precision import full_precision

# The seam's computations that select (top-k), iterate (power iterations) or compare (norms).
FULL_PRECISION_METHODS = ("lmo", "lmo_at", "away_vertex", "norm", "make_feasible")


def resolve_k(k: float, size: int, name: str = "k") -> int:
    """An absolute count in ``[1, size]`` from ``k`` given as a fraction or a count.

    ``0 < k <= 1`` is a fraction of ``size`` (``k = 1`` is the full dimension, as in the SFW code);
    ``k > 1`` must be a whole number and is a count, capped at ``size``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise ParameterError(name, f"got {k!r}; allowed: a fraction in (0, 1] or a whole count > 1")
    if k <= 1:
        return max(1, min(int(k * size), size))
    if float(k) != int(k):
        raise ParameterError(name, f"got {k!r}; a value above 1 is a count and must be a whole number")
    return min(int(k), size)


def check_radius(radius: float, name: str = "value") -> float:
    """A positive finite radius as a float."""
    value = float(radius)
    if not value > 0 or not math.isfinite(value):
        raise ParameterError(name, f"the radius must be a positive finite number, got {radius!r}")
    return value


def safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0 (zero in, zero out)."""
    nonzero = denominator > 0
    # Scalars, not filled tensors: the optimiser calls this twice per group and step, and on a GPU
    # every extra kernel launch counts.
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, 1.0), 0.0)


class ConstraintSet(ABC):
    """A compact convex set for one tensor of shape ``shape`` (see the module docstring).

    Subclasses implement ``lmo``, ``norm``, ``diameter`` and ``radius_for_diameter``.
    """

    #: Short name used in configs and reports (``ksupport``, ``l2``, ...).
    kind: str = ""
    #: Whether ``away_vertex`` exists (the set reads its active atoms off the iterate).
    supports_away_steps: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in FULL_PRECISION_METHODS:
            if name in cls.__dict__ and not getattr(cls.__dict__[name], "__isabstractmethod__", False):
                setattr(cls, name, full_precision(cls.__dict__[name]))

    def __init__(self, shape: Sequence[int], radius: float) -> None:
        self.shape = torch.Size(int(d) for d in shape)
        if self.numel < 1:
            raise ValueError(
                f"{type(self).__name__}: the constrained tensor is empty (shape {tuple(self.shape)})"
            )
        self.radius = self._validated_radius(radius)

    def _validated_radius(self, radius: Any) -> Any:
        """The radius as stored (a float; row-wise sets store one per row)."""
        return check_radius(radius)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    # ------------------------------------------------------------------ the seam
    @abstractmethod
    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        """``argmin_{V in C} <grad, V>``, shaped like the parameter (zero for a zero gradient)."""

    @abstractmethod
    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """The gauge of the set: ``x`` is feasible iff ``norm(x) <= radius``."""

    @property
    @abstractmethod
    def diameter(self) -> float:
        """The Euclidean (L2) diameter of the set."""

    def lmo_at(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The oracle at the iterate ``x``: ``lmo(grad)`` for a set that does not depend on ``x``."""
        return self.lmo(grad)

    def away_vertex(self, grad: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, alpha)``: the active atom of ``x`` maximising ``<grad, a>`` and its weight in ``x``."""
        raise NotImplementedError(f"{type(self).__name__} keeps no active set; pairwise steps are not available")

    @classmethod
    @abstractmethod
    def radius_for_diameter(cls, diameter: float, shape: Sequence[int], **options: Any) -> float:
        """The radius whose set has L2 diameter ``diameter`` (``options`` as for the constructor)."""

    @classmethod
    def from_diameter(cls, shape: Sequence[int], diameter: float, **options: Any) -> ConstraintSet:
        """The set of L2 diameter ``diameter`` for a tensor of ``shape``."""
        return cls(shape, cls.radius_for_diameter(check_radius(diameter), shape, **options), **options)

    # ------------------------------------------------------------------ shared behaviour
    def radius_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """The radius as a tensor that broadcasts against ``norm(x)``."""
        # Filled on the device: a tensor made from a Python number would be copied from the host,
        # which on a GPU waits for the queued work, once per oracle call.
        return torch.full((), self.radius, dtype=like.dtype, device=like.device)

    def make_feasible(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` scaled by ``min(1, radius / norm(x))``: unchanged when feasible, on the boundary otherwise."""
        norm = self.norm(x)
        scale = torch.clamp(safe_ratio(self.radius_tensor(norm), norm), max=1.0)
        scale = torch.where(norm > 0, scale, torch.ones_like(scale))
        return x * self._broadcast(scale, x)

    def is_feasible(self, x: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
        """Whether ``norm(x) <= radius`` up to a relative and absolute tolerance."""
        norm = self.norm(x)
        radius = self.radius_tensor(norm)
        return bool((norm <= radius * (1 + rtol) + atol).all())

    def describe(self) -> dict[str, Any]:
        """Plain figures of the set for checkpoints and ``results.json``."""
        return {"set": self.kind, "shape": list(self.shape), "radius": self.radius, "diameter": self.diameter}

    def _broadcast(self, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Reshape a per-set (0-dim) scale to multiply ``x``; row-wise sets override this."""
        return scale

    def _check_shape(self, tensor: torch.Tensor) -> None:
        if tensor.shape != self.shape:
            raise ValueError(
                f"{type(self).__name__} was built for shape {tuple(self.shape)}, got a tensor of shape {tuple(tensor.shape)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, radius={self.radius:.4g})"
