"""The N:M sparse polytope: the k-sparse polytope of every group of M consecutive input weights."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from consparse.errors import ParameterError
from consparse.nm_pattern import NMPattern, parse_nm
from consparse.optim.constraints.base import ConstraintSet


class NMSparsePolytope(ConstraintSet):
    """``conv{V : every group holds at most N entries, each +-tau, the rest 0}``.

    Groups are M consecutive weights along the input dimension (``consparse.nm_pattern``). The set
    is the product over groups of the k-sparse polytope with k = N, so it is
    ``{x : |x_i| <= tau, ||x_g||_1 <= N tau for every group g}`` and its vertices are the N:M tensors
    with entries ``+-tau`` (a short last group of a row: ``min(N, length)`` entries).

    LMO: ``-tau sign(g)`` on the N largest ``|g|`` of every group (a zero gradient gives zero). Norm:
    ``max_g max(||x_g||_inf, ||x_g||_1 / N)``, the largest group gauge (a short group's own gauge is
    the same, since ``||x_g||_1 / len <= ||x_g||_inf`` when it holds fewer than N entries). L2
    diameter ``2 tau sqrt(K)`` with K the non-zeros of a vertex (``N/M`` of the entries), as for the
    k-sparse polytope with k = K; so is the radius sized from the initial weights.

    Unlike a k-sparse polytope with k = N/M of the entries, every vertex is deployable as N:M, so
    the trained weights (convex combinations of few vertices) put their mass where N:M pruning
    without retraining keeps it.
    """

    kind = "nm"

    def __init__(self, shape: Sequence[int], radius: float, nm: NMPattern | str = "2:4") -> None:
        super().__init__(shape, radius)
        if len(self.shape) < 2:
            raise ParameterError(
                "table",
                f"the nm set groups the input weights of a Linear or conv weight (>= 2 dims), got shape "
                f"{tuple(self.shape)}; constrain biases and norms with another set (e.g. l2)",
            )
        self.pattern = parse_nm(nm, "nm")
        self.vertex_nonzeros = self.pattern.max_nonzeros(self.shape)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        self._check_shape(grad)
        keep = self.pattern.keep_mask(grad.abs())
        return torch.where(keep, -self.radius_tensor(grad) * torch.sign(grad), torch.zeros_like(grad))

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = self.pattern.grouped(x.abs())
        per_group = torch.maximum(magnitude.amax(dim=-1), magnitude.sum(dim=-1) / self.pattern.n)
        return per_group.amax()

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * math.sqrt(self.vertex_nonzeros)

    @classmethod
    def radius_for_diameter(cls, diameter: float, shape: Sequence[int], nm: NMPattern | str = "2:4") -> float:
        nonzeros = parse_nm(nm, "nm").max_nonzeros(tuple(int(d) for d in shape))
        return diameter / (2.0 * math.sqrt(nonzeros))

    def describe(self) -> dict:
        return {**super().describe(), "nm": str(self.pattern)}
