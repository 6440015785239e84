"""The k-sparse polytope (Pokutta, Spiegel, Zimmer 2020) over a whole tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from consparse.optim.constraints.base import ConstraintSet, resolve_k

# Rows at least this long (on the CPU) first bound the k-th largest magnitude from below on a strided
# sample, so that the exact selection runs on the few candidates above the bound: torch's CPU topk
# partially sorts the whole row, the bound costs one comparison pass. A prime stride avoids lining up with the rows of a weight.
CANDIDATE_TOPK_MIN_SIZE = 1 << 16
SAMPLE_STRIDE = 31
# Safety margin on the sample rank, so that the bound stays below the true k-th largest value.
SAMPLE_RANK_FACTOR = 1.25
SAMPLE_RANK_SLACK = 8


def top_k_indices_rows(grad: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the ``k`` largest ``|grad|`` entries of each row (rows, n) -> (rows, k).

    Exactly ``k`` entries even on ties (the SFW code's ``>= threshold`` could keep more).
    """
    magnitudes = grad.abs()
    rows, n = magnitudes.shape
    if rows == 1 and magnitudes.device.type == "cpu" and n >= CANDIDATE_TOPK_MIN_SIZE and k < n // 2:
        indices = _top_k_among_candidates(magnitudes[0], k)
        if indices is not None:
            return indices.unsqueeze(0)
    return torch.topk(magnitudes, k, dim=1, sorted=False).indices


def _top_k_among_candidates(magnitudes: torch.Tensor, k: int) -> torch.Tensor | None:
    """The exact top-k of a long vector via a sampled lower bound (None when the bound was too high).

    Every entry of the top k is at least the k-th largest value; if at least k entries clear the
    bound, the k-th largest does too, so the top k are all among the candidates.
    """
    sample = magnitudes[::SAMPLE_STRIDE]
    rank = min(
        sample.numel(),
        math.ceil(k * sample.numel() / magnitudes.numel() * SAMPLE_RANK_FACTOR) + SAMPLE_RANK_SLACK,
    )
    bound = torch.topk(sample, rank, sorted=False).values.min()
    candidates = torch.nonzero(magnitudes >= bound).squeeze(1)
    if candidates.numel() < k:
        return None
    return candidates[torch.topk(magnitudes[candidates], k, sorted=False).indices]


def ksparse_vertex_rows(grad: torch.Tensor, k: int, tau: torch.Tensor) -> torch.Tensor:
    """Per row: ``-tau * sign(g)`` on the ``k`` largest ``|g|``, zero elsewhere (``tau`` a column or scalar)."""
    index = top_k_indices_rows(grad, k)
    return torch.zeros_like(grad).scatter_(1, index, -tau * torch.sign(grad.gather(1, index)))


def ksparse_norm_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: ``max(||x||_inf, ||x||_1 / k)``, the gauge of the polytope with ``tau = 1``."""
    magnitude = x.abs()
    return torch.maximum(magnitude.amax(dim=1), magnitude.sum(dim=1) / k)


class KSparsePolytope(ConstraintSet):
    """``conv{v : v has k entries equal to +-tau, the rest 0} = B_1(k tau) ∩ B_inf(tau)``.

    The radius is ``tau``. LMO: ``-tau sign(g)`` on the ``k`` largest ``|g|``. L2 diameter
    ``2 tau sqrt(k)``. ``k`` is a fraction of the entries (``0 < k <= 1``) or a count.
    """

    kind = "ksparse"

    def __init__(self, shape: Sequence[int], radius: float, k: float = 1.0) -> None:
        super().__init__(shape, radius)
        self.k = resolve_k(k, self.numel)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        self._check_shape(grad)
        return ksparse_vertex_rows(grad.reshape(1, -1), self.k, self.radius_tensor(grad)).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksparse_norm_rows(x.reshape(1, -1), self.k)[0]

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius * math.sqrt(self.k)

    @classmethod
    def radius_for_diameter(cls, diameter: float, shape: Sequence[int], k: float = 1.0) -> float:
        return diameter / (2.0 * math.sqrt(resolve_k(k, math.prod(shape))))

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k}
