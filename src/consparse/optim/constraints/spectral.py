"""Spectral sets on a weight seen as a matrix ``c_out x (everything else)``: nuclear and spectral-k-support balls.

Their LMOs need only the top-k right singular subspace ``Q`` of the gradient ``M``: then
``(M Q) Q^T = U_k S_k V_k^T``. ``Q`` comes from block power (subspace) iteration with QR,
warm-started from the previous step's subspace: a few ``O(m n k)`` matrix products per step instead
of a full SVD (or any SVD). Whatever the convergence, the vertex has rank <= k and Frobenius norm
``radius``, so it is always feasible; an unconverged subspace only makes the LMO inexact. ``torch.svd_lowrank`` and ``torch.lobpcg`` are not used because they draw
a random start from the global generator, which would differ between DDP ranks (and between a run
and its resumption); the start here is a deterministic function of the gradient or the warm start.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from consparse.errors import ParameterError
from consparse.optim.constraints.base import ConstraintSet, resolve_k, safe_ratio
from consparse.optim.constraints.ksupport import ksupport_norm_rows

# Iterations without a warm start (the first step): the SFW code's 10 QR iterations.
COLD_START_ITERATIONS = 10


def matrix_view(shape: torch.Size) -> tuple[int, int]:
    """``(c_out, rest)`` of a weight with >= 2 dims."""
    if len(shape) < 2:
        raise ParameterError(
            "table",
            f"spectral sets need a weight with >= 2 dims (seen as c_out x rest), got shape {tuple(shape)}",
        )
    rows = shape[0]
    return rows, int(torch.Size(shape).numel() // rows)


def top_right_singular_basis(
    matrix: torch.Tensor, k: int, iterations: int, start: torch.Tensor | None = None
) -> torch.Tensor:
    """An orthonormal basis ``Q`` (n, k) of the approximate top-``k`` right singular subspace of ``matrix`` (m, n).

    ``start`` (n, k) is a warm start; without one the ``k`` rows of largest norm are used. Each
    iteration is one subspace iteration on ``M^T M`` (two ``m x n x k`` products and the QR of an
    ``n x k`` block). The basis is exact once converged, and after one iteration when ``k = min(m, n)``.
    Then ``(M Q) Q^T`` is the best rank-k approximation ``U_k S_k V_k^T`` of ``M``, and ``M Q`` has
    the top-k singular values of ``M``; no SVD of any size is needed.
    """
    if start is None:
        rows = torch.topk(torch.linalg.vector_norm(matrix, dim=1), k, sorted=False).indices
        start = matrix[rows].T
    basis = torch.linalg.qr(start).Q
    for _ in range(iterations):
        basis = torch.linalg.qr(matrix.T @ (matrix @ basis)).Q
    return basis


class _SpectralSet(ConstraintSet):
    """Shared machinery: the matrix view, ``k`` over the rank, and the warm-started partial SVD."""

    def __init__(self, shape: Sequence[int], radius: float, k: float = 1.0, svd_iterations: int = 1) -> None:
        super().__init__(shape, radius)
        self.rows, self.cols = matrix_view(self.shape)
        self.k = resolve_k(k, min(self.rows, self.cols))
        if isinstance(svd_iterations, bool) or not isinstance(svd_iterations, int) or svd_iterations < 1:
            raise ParameterError(
                "svd_iterations", f"got {svd_iterations!r}; allowed: an integer >= 1"
            )
        self.svd_iterations = svd_iterations
        self._warm_start: torch.Tensor | None = None

    def _projection(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M Q, Q)`` for the gradient matrix ``M`` and its top-k right singular basis ``Q`` (warm-started)."""
        matrix = grad.reshape(self.rows, self.cols)
        start = self._warm_start
        if start is not None and (start.device != grad.device or start.dtype != grad.dtype):
            start = None
        iterations = (
            self.svd_iterations if start is not None else max(self.svd_iterations, COLD_START_ITERATIONS)
        )
        basis = top_right_singular_basis(matrix, self.k, iterations, start)
        self._warm_start = basis.detach()
        return matrix @ basis, basis

    def singular_values(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x.reshape(self.rows, self.cols))

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius

    @classmethod
    def radius_for_diameter(
        cls, diameter: float, shape: Sequence[int], k: float = 1.0, svd_iterations: int = 1
    ) -> float:
        return diameter / 2.0

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k, "max_rank": min(self.rows, self.cols)}


class NuclearNormBall(_SpectralSet):
    """``{X : ||X||_* <= radius}``. LMO ``-radius u_1 v_1^T`` (top singular pair of the gradient).

    L2 (Frobenius) diameter ``2 radius``. ``k`` is ignored (always 1).
    """

    kind = "nuclear"

    def __init__(self, shape: Sequence[int], radius: float, k: float = 1, svd_iterations: int = 1) -> None:
        super().__init__(shape, radius, 1.0, svd_iterations)
        self.k = 1  # one singular pair (resolve_k would read k = 1 as the fraction "all")

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        self._check_shape(grad)
        projected, basis = self._projection(grad)  # M q = sigma_1 u_1 for the top right singular vector q
        left = safe_ratio(projected, torch.linalg.vector_norm(projected))
        return (-self.radius * left @ basis.T).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.singular_values(x).sum()


class SpectralKSupportNormBall(_SpectralSet):
    """``conv{V : rank(V) <= k, ||V||_F <= radius}``: the k-support norm of the singular values.

    LMO: ``-radius U_k diag(S_k) V_k^T / ||S_k||_2`` from the top-k SVD of the gradient.
    L2 diameter ``2 radius``. ``k`` is a fraction of the maximal rank ``min(c_out, rest)`` or a count.
    """

    kind = "spectral_ksupport"

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        self._check_shape(grad)
        # (M Q) Q^T = U_k S_k V_k^T, and ||M Q||_F = ||S_k||_2.
        projected, basis = self._projection(grad)
        scaled = safe_ratio(projected, torch.linalg.vector_norm(projected))
        return (-self.radius * scaled @ basis.T).reshape(self.shape)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksupport_norm_rows(self.singular_values(x).reshape(1, -1), self.k)[0]
