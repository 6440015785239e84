"""Row-wise sets: each row of a matrix in its own ball (a product of balls), radius per row.

The implicit Frank-Wolfe method keeps every row of ``[A B]`` in an L1 ball so that the implicit
model stays well-posed; to the optimiser a product set is just another constraint set. ``norm``
returns one value per row and ``radius`` is a vector, so ``make_feasible`` rescales each offending
row on its own. Tensors with more than two dims are seen as ``shape[0] x rest``.

A support budget (``support_budget``: a fraction of the columns or a count, per row) caps how many
nonzeros each row may hold: ``lmo_at(grad, x)`` lets a row whose support is full choose only among
its current support, and a row with ``b`` free places only among its support and the ``b`` largest
``|grad|`` outside it. Frank-Wolfe from zero then never exceeds the budget (each step adds vertex
entries only where allowed), and a full row goes on optimising on the face of its support. The
budget may also be set between steps to one count per row (a budget shared by several sets and
allocated outside them, as ``method=implicit_fw`` does over a whole model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from consparse.errors import ParameterError
from consparse.optim.constraints.base import ConstraintSet, resolve_k
from consparse.optim.constraints.ksparse import ksparse_norm_rows, ksparse_vertex_rows
from consparse.optim.constraints.ksupport import ksupport_norm_rows, ksupport_vertex_rows
from consparse.optim.constraints.lp import l1_vertex_rows

RadiusLike = float | Sequence[float] | torch.Tensor


class _RowwiseSet(ConstraintSet):
    """Shared machinery: the ``rows x cols`` view, per-row radii and per-row rescaling."""

    def __init__(self, shape: Sequence[int], radius: RadiusLike, support_budget: float | None = None) -> None:
        shape = torch.Size(int(d) for d in shape)
        if len(shape) < 2:
            raise ParameterError(
                "", f"a row-wise set needs a tensor with >= 2 dims, got shape {tuple(shape)}"
            )
        self.rows = shape[0]
        self.cols = int(shape.numel() // self.rows)
        self._device_radius: tuple[torch.Tensor, torch.Tensor] | None = None
        super().__init__(shape, radius)
        #: Most nonzeros per row: None (no budget), one count, or one count per row (a tensor).
        self.support_budget: int | torch.Tensor | None = (
            None
            if support_budget is None
            else resolve_k(support_budget, self.cols, "support_budget")
        )

    def lmo_at(self, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The LMO restricted, per row, to what the support budget still allows (module docstring)."""
        if self.support_budget is None:
            return self.lmo(grad)
        g = self._matrix(grad)
        support = self._matrix(x) != 0
        budget = self.support_budget
        if isinstance(budget, torch.Tensor):
            budget = budget.to(g.device).reshape(-1, 1)
        room = (budget - support.sum(dim=1, keepdim=True)).clamp_min(0)
        # A vertex has at most atoms_per_row entries, so allowing more than that many entries outside
        # the support changes nothing: the width of the search is fixed (no read-back of `room`).
        widest = min(self.atoms_per_row, self.cols)
        # Off-support entries rank first (support entries get -1 < |g|); the top `room` of them are allowed.
        outside = torch.where(support, torch.full_like(g, -1.0), g.abs())
        top = torch.topk(outside, widest, dim=1).indices
        ranks = torch.arange(widest, device=g.device).expand_as(top)
        extra = torch.zeros_like(support).scatter_(1, top, ranks < room)
        allowed = support | extra
        return self.lmo(torch.where(allowed, g, torch.zeros_like(g)).reshape(self.shape))

    @property
    def atoms_per_row(self) -> int:
        """Most nonzeros one vertex puts in a row (what one Frank-Wolfe step can add to it)."""
        return 1

    def _validated_radius(self, radius: Any) -> torch.Tensor:
        radii = torch.as_tensor(radius, dtype=torch.float32).detach().reshape(-1).cpu()
        if radii.numel() == 1:
            radii = radii.expand(self.rows).clone()
        if radii.numel() != self.rows:
            raise ParameterError(
                "radius",
                f"got {radii.numel()} radii for {self.rows} rows; give one per row or one number",
            )
        if not bool(torch.isfinite(radii).all()) or not bool((radii > 0).all()):
            raise ParameterError("radius", "every row radius must be a positive finite number")
        return radii

    def radius_tensor(self, like: torch.Tensor) -> torch.Tensor:
        # Kept on the device after the first call: copying the host radii every step would wait for
        # the GPU's queue each time. Keyed by the radius object, so a radius assigned later is seen.
        cached = self._device_radius
        if (cached is None or cached[0] is not self.radius or cached[1].device != like.device
                or cached[1].dtype != like.dtype):
            cached = self._device_radius = (self.radius, self.radius.to(device=like.device, dtype=like.dtype))
        return cached[1]

    def _radius_column(self, like: torch.Tensor) -> torch.Tensor:
        return self.radius_tensor(like).reshape(-1, 1)

    def _broadcast(self, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return scale.reshape(-1, *([1] * (x.dim() - 1)))

    def _matrix(self, tensor: torch.Tensor) -> torch.Tensor:
        self._check_shape(tensor)
        return tensor.reshape(self.rows, self.cols)

    def row_diameters(self) -> torch.Tensor:
        """The L2 diameter of each row's ball."""
        return 2.0 * self.radius * self._l2_per_unit_radius()

    def _l2_per_unit_radius(self) -> float:
        return 1.0

    @property
    def diameter(self) -> float:
        """The diameter of the product set: ``sqrt(sum_i D_i^2)``."""
        return float(torch.linalg.vector_norm(self.row_diameters().double()))

    @classmethod
    def radius_for_diameter(cls, diameter: float, shape: Sequence[int], **options: Any) -> float:
        """The one radius shared by every row that gives the product set the L2 diameter ``diameter``."""
        rows = int(shape[0])
        per_row = cls(shape, 1.0, **options)._l2_per_unit_radius()
        return diameter / (2.0 * per_row * math.sqrt(rows))

    def describe(self) -> dict[str, Any]:
        return {
            "set": self.kind,
            "shape": list(self.shape),
            "radius_min": float(self.radius.min()),
            "radius_max": float(self.radius.max()),
            "diameter": self.diameter,
            "support_budget": "per row, set between steps"
            if isinstance(self.support_budget, torch.Tensor)
            else self.support_budget,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={tuple(self.shape)}, radius in "
            f"[{float(self.radius.min()):.4g}, {float(self.radius.max()):.4g}])"
        )


class RowwiseL1Ball(_RowwiseSet):
    """Each row in ``{x : ||x||_1 <= r_i}``. LMO: one signed coordinate per row (the largest ``|g|``).

    Away atoms: a row ``x`` is the convex combination of the atoms ``sign(x_j) r e_j`` with weights
    ``|x_j| / r`` and of the origin with the slack ``1 - ||x||_1 / r``, so the active set is read off
    the iterate and pairwise steps need no stored atoms.
    """

    kind = "rowwise_l1"
    supports_away_steps = True

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        g = self._matrix(grad)
        return l1_vertex_rows(g, self._radius_column(g)).reshape(self.shape)

    def away_vertex(self, grad: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the active atom with the largest ``<grad, a>`` (the origin scores 0) and its weight."""
        g, rows = self._matrix(grad), self._matrix(x)
        radius = self._radius_column(rows)
        weights = rows.abs() / radius
        slack = (1.0 - weights.sum(dim=1)).clamp_min(0.0)
        scores = torch.where(rows != 0, torch.sign(rows) * g * radius, torch.full_like(g, -torch.inf))
        best, index = scores.max(dim=1)
        origin = (slack > 0) & ~(best > 0)
        atom_values = torch.where(origin, 0.0, torch.sign(rows.gather(1, index[:, None]))[:, 0] * radius[:, 0])
        atom = torch.zeros_like(rows).scatter_(1, index[:, None], atom_values[:, None])
        weight = torch.where(origin, slack, weights.gather(1, index[:, None])[:, 0])
        return atom.reshape(self.shape), self._broadcast(weight, x)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._matrix(x).abs().sum(dim=1)


class RowwiseKSparsePolytope(_RowwiseSet):
    """Each row in the k-sparse polytope of radius ``tau_i``: ``k`` signed entries of size ``tau_i`` per row."""

    kind = "rowwise_ksparse"

    def __init__(
        self, shape: Sequence[int], radius: RadiusLike, k: float = 1.0, support_budget: float | None = None
    ) -> None:
        super().__init__(shape, radius, support_budget)
        self.k = resolve_k(k, self.cols)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        g = self._matrix(grad)
        return ksparse_vertex_rows(g, self.k, self._radius_column(g)).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksparse_norm_rows(self._matrix(x), self.k)

    def _l2_per_unit_radius(self) -> float:
        return math.sqrt(self.k)

    @property
    def atoms_per_row(self) -> int:
        return self.k

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k": self.k}


class RowwiseKSupportNormBall(_RowwiseSet):
    """Each row in the k-support norm ball of radius ``r_i``: the top-``k`` gradient entries per row, normalised."""

    kind = "rowwise_ksupport"

    def __init__(
        self, shape: Sequence[int], radius: RadiusLike, k: float = 1.0, support_budget: float | None = None
    ) -> None:
        super().__init__(shape, radius, support_budget)
        self.k = resolve_k(k, self.cols)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        g = self._matrix(grad)
        return ksupport_vertex_rows(g, self.k, self._radius_column(g)).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksupport_norm_rows(self._matrix(x), self.k)

    @property
    def atoms_per_row(self) -> int:
        return self.k

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k": self.k}
