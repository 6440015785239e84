"""Row-wise sets: each row of a matrix in its own ball (a product of balls), radius per row.

The implicit Frank-Wolfe method keeps every row of ``[A B]`` in an L1 ball so that the implicit
model stays well-posed; to the optimiser a product set is just another constraint set. ``norm``
returns one value per row and ``radius`` is a vector, so ``make_feasible`` rescales each offending
row on its own. Tensors with more than two dims are seen as ``shape[0] x rest``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from consparse.errors import ConfigError
from consparse.optim.constraints.base import ConstraintSet, resolve_k
from consparse.optim.constraints.ksparse import ksparse_norm_rows, ksparse_vertex_rows
from consparse.optim.constraints.ksupport import ksupport_norm_rows, ksupport_vertex_rows
from consparse.optim.constraints.lp import l1_vertex_rows

RadiusLike = float | Sequence[float] | torch.Tensor


class _RowwiseSet(ConstraintSet):
    """Shared machinery: the ``rows x cols`` view, per-row radii and per-row rescaling."""

    def __init__(self, shape: Sequence[int], radius: RadiusLike) -> None:
        shape = torch.Size(int(d) for d in shape)
        if len(shape) < 2:
            raise ConfigError(
                "method.constraint", f"a row-wise set needs a tensor with >= 2 dims, got shape {tuple(shape)}"
            )
        self.rows = shape[0]
        self.cols = int(shape.numel() // self.rows)
        super().__init__(shape, radius)

    def _validated_radius(self, radius: Any) -> torch.Tensor:
        radii = torch.as_tensor(radius, dtype=torch.float32).detach().reshape(-1).cpu()
        if radii.numel() == 1:
            radii = radii.expand(self.rows).clone()
        if radii.numel() != self.rows:
            raise ConfigError(
                "method.constraint.radius",
                f"got {radii.numel()} radii for {self.rows} rows; give one per row or one number",
            )
        if not bool(torch.isfinite(radii).all()) or not bool((radii > 0).all()):
            raise ConfigError("method.constraint.radius", "every row radius must be a positive finite number")
        return radii

    def radius_tensor(self, like: torch.Tensor) -> torch.Tensor:
        return self.radius.to(device=like.device, dtype=like.dtype)

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
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={tuple(self.shape)}, radius in "
            f"[{float(self.radius.min()):.4g}, {float(self.radius.max()):.4g}])"
        )


class RowwiseL1Ball(_RowwiseSet):
    """Each row in ``{x : ||x||_1 <= r_i}``. LMO: one signed coordinate per row (the largest ``|g|``)."""

    kind = "rowwise_l1"

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        g = self._matrix(grad)
        return l1_vertex_rows(g, self._radius_column(g)).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._matrix(x).abs().sum(dim=1)


class RowwiseKSparsePolytope(_RowwiseSet):
    """Each row in the k-sparse polytope of radius ``tau_i``: ``k`` signed entries of size ``tau_i`` per row."""

    kind = "rowwise_ksparse"

    def __init__(self, shape: Sequence[int], radius: RadiusLike, k: float = 1.0) -> None:
        super().__init__(shape, radius)
        self.k = resolve_k(k, self.cols)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        g = self._matrix(grad)
        return ksparse_vertex_rows(g, self.k, self._radius_column(g)).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksparse_norm_rows(self._matrix(x), self.k)

    def _l2_per_unit_radius(self) -> float:
        return math.sqrt(self.k)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k": self.k}


class RowwiseKSupportNormBall(_RowwiseSet):
    """Each row in the k-support norm ball of radius ``r_i``: the top-``k`` gradient entries per row, normalised."""

    kind = "rowwise_ksupport"

    def __init__(self, shape: Sequence[int], radius: RadiusLike, k: float = 1.0) -> None:
        super().__init__(shape, radius)
        self.k = resolve_k(k, self.cols)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        g = self._matrix(grad)
        return ksupport_vertex_rows(g, self.k, self._radius_column(g)).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksupport_norm_rows(self._matrix(x), self.k)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k": self.k}
