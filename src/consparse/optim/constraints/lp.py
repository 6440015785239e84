"""Lp-norm balls (L1, L2, L-infinity and any p >= 1) over a whole tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from consparse.errors import ParameterError
from consparse.optim.constraints.base import ConstraintSet, safe_ratio


def l1_vertex_rows(grad: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Per row of ``grad`` (rows, n): ``-radius * sign(g_i*) e_i*`` at ``i* = argmax |g_i|`` (zero row -> 0).

    ``radius`` broadcasts as a column (rows, 1). This is the L1-ball LMO, one row at a time.
    """
    index = grad.abs().argmax(dim=1, keepdim=True)
    values = -radius * torch.sign(grad.gather(1, index))
    return torch.zeros_like(grad).scatter_(1, index, values)


class LpBall(ConstraintSet):
    """``{x : ||x||_p <= radius}`` on the flattened tensor, ``1 <= p <= inf``.

    LMO (Hölder's equality case), with ``q = p / (p - 1)``:
    ``p = 1``: ``-r sign(g_i*) e_i*`` at the largest ``|g_i|``; ``p = 2``: ``-r g / ||g||_2``;
    ``p = inf``: ``-r sign(g)``; otherwise ``V_i = -r sign(g_i) |g_i|^(q-1) / ||g||_q^(q-1)``.
    L2 diameter: ``2 r max(1, n^(1/2 - 1/p))`` (the authors' ``(D/2) n^(1/p - 1/2)`` is right for
    ``p >= 2`` only, which is why their code special-cases ``p = 1``).
    """

    def __init__(self, shape: Sequence[int], radius: float, p: float = 2.0) -> None:
        super().__init__(shape, radius)
        self.p = self.check_p(p)
        self.kind = {1.0: "l1", 2.0: "l2", math.inf: "linf"}.get(self.p, f"l{self.p:g}")

    @staticmethod
    def check_p(p: float) -> float:
        value = float(p)
        if not value >= 1.0:
            raise ParameterError(
                "p", f"got {p!r}; allowed: p >= 1 (inf for the L-infinity ball)"
            )
        return value

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        self._check_shape(grad)
        g = grad.reshape(1, -1)
        if self.p == 1.0:
            vertex = l1_vertex_rows(g, self.radius_tensor(g))
        elif self.p == 2.0:
            vertex = -self.radius * safe_ratio(g, torch.linalg.vector_norm(g))
        elif self.p == math.inf:
            vertex = -self.radius * torch.sign(g)
        else:
            q = self.p / (self.p - 1.0)
            powered = g.abs() ** (q - 1.0)
            scale = torch.linalg.vector_norm(g, ord=q) ** (q - 1.0)
            vertex = -self.radius * torch.sign(g) * safe_ratio(powered, scale)
        return vertex.reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x.reshape(-1), ord=self.p)

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * self._l2_per_unit_radius(self.p, self.numel)

    @classmethod
    def radius_for_diameter(cls, diameter: float, shape: Sequence[int], p: float = 2.0) -> float:
        return diameter / (2.0 * cls._l2_per_unit_radius(cls.check_p(p), math.prod(shape)))

    @staticmethod
    def _l2_per_unit_radius(p: float, n: int) -> float:
        """Largest L2 norm on the unit Lp sphere in dimension n."""
        return max(1.0, n ** (0.5 - 1.0 / p))

    def describe(self) -> dict:
        return {**super().describe(), "p": self.p}
