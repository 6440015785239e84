"""The k-support norm ball (Argyriou, Foygel, Srebro 2012) over a whole tensor, and its norm."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from consparse.optim.constraints.base import ConstraintSet, resolve_k, safe_ratio
from consparse.optim.constraints.ksparse import top_k_indices_rows


def ksupport_vertex_rows(grad: torch.Tensor, k: int, radius: torch.Tensor) -> torch.Tensor:
    """Per row: ``-radius * g_k / ||g_k||_2`` where ``g_k`` keeps the ``k`` largest ``|g|`` (zero row -> 0)."""
    index = top_k_indices_rows(grad, k)
    values = grad.gather(1, index)
    scale = safe_ratio(radius, torch.linalg.vector_norm(values, dim=1, keepdim=True))
    return torch.zeros_like(grad).scatter_(1, index, -scale * values)


def ksupport_norm_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-support norm of each row of ``x`` (rows, n), in closed form.

    With ``a_1 >= a_2 >= ...`` the sorted magnitudes (1-indexed, ``a_0 = inf``) and the tail sums
    ``S_j = sum_{i >= j} a_i``, there is one ``r`` in ``{0, ..., k-1}`` with
    ``a_{k-r-1} > S_{k-r} / (r+1) >= a_{k-r}``, and then
    ``norm^2 = sum_{i < k-r} a_i^2 + S_{k-r}^2 / (r+1)`` (Argyriou et al. 2012, Prop. 2.1).
    All ``r`` are tested at once; the one violating the two inequalities least is chosen, which is
    the exact one up to rounding. k = 1 gives the L1 norm, k = n the L2 norm.
    """
    absolute = x.abs()
    k = min(k, absolute.shape[1])
    # Only the k largest entries and the tail sums S_1 .. S_k enter: a top-k instead of a full sort.
    magnitudes = absolute.topk(k, dim=1).values
    before_j = torch.cat([torch.zeros_like(magnitudes[:, :1]), magnitudes.cumsum(1)[:, :-1]], dim=1)
    tails = absolute.sum(1, keepdim=True) - before_j
    heads = (magnitudes**2).cumsum(1)
    r = torch.arange(k, device=x.device)
    start = k - 1 - r  # 0-indexed first entry of the averaged tail block
    tail_mean = tails[:, start] / (r + 1).to(x.dtype)
    before = torch.where(
        start >= 1, magnitudes[:, (start - 1).clamp(min=0)], torch.full_like(tail_mean, math.inf)
    )
    violation = torch.relu(tail_mean - before) + torch.relu(magnitudes[:, start] - tail_mean)
    best = violation.argmin(dim=1)
    chosen_start = start[best].unsqueeze(1)
    head = torch.where(chosen_start >= 1, heads.gather(1, (chosen_start - 1).clamp(min=0)), 0.0).squeeze(1)
    tail = tails.gather(1, chosen_start).squeeze(1)
    return torch.sqrt(head + tail**2 / (r[best] + 1).to(x.dtype))


class KSupportNormBall(ConstraintSet):
    """``conv{v : ||v||_0 <= k, ||v||_2 <= radius}``, the k-support norm ball of radius ``radius``.

    LMO: keep the ``k`` largest ``|g|``, ``V = -radius g_k / ||g_k||_2``. L2 diameter ``2 radius``.
    ``k`` is a fraction of the entries (``0 < k <= 1``) or a count.
    """

    kind = "ksupport"

    def __init__(self, shape: Sequence[int], radius: float, k: float = 1.0) -> None:
        super().__init__(shape, radius)
        self.k = resolve_k(k, self.numel)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        self._check_shape(grad)
        return ksupport_vertex_rows(grad.reshape(1, -1), self.k, self.radius_tensor(grad)).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksupport_norm_rows(x.reshape(1, -1), self.k)[0]

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius

    @classmethod
    def radius_for_diameter(cls, diameter: float, shape: Sequence[int], k: float = 1.0) -> float:
        return diameter / 2.0

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k}
