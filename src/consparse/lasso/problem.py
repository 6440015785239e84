"""The LASSO problem of many rows sharing one design, from sufficient statistics.

Each row r has ``min_w 1/2 ||M w - z_r||^2 + lam_r ||w||_1`` on the same design ``M`` (m x d). Only
the Gram matrix ``G = M^T M`` (d x d, shared), the correlations ``c_r = M^T z_r`` and ``||z_r||^2``
enter, so no solver's cost grows with the samples. Here: the problem, its objective, gradient and
optimality check (the yardstick every solver and test uses), and the ridge that keeps the support
systems of rank-deficient designs positive definite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Relative slack (of lam) before an inactive correlation counts as violating the optimality conditions.
VIOLATION = 1e-9


@dataclass
class LassoProblem:
    """Sufficient statistics of many least-squares targets on one design.

    Attributes:
        gram: ``M^T M`` (d x d).
        correlations: ``M^T z_r`` for each row r (rows x d).
        target_sq_norms: ``||z_r||^2`` (rows,).
    """

    gram: torch.Tensor
    correlations: torch.Tensor
    target_sq_norms: torch.Tensor

    def __post_init__(self) -> None:
        d = self.gram.shape[0]
        if self.gram.shape != (d, d) or self.correlations.dim() != 2 or self.correlations.shape[1] != d:
            raise ValueError(
                f"gram {tuple(self.gram.shape)} and correlations {tuple(self.correlations.shape)} do not match"
            )
        if self.target_sq_norms.shape != (self.correlations.shape[0],):
            raise ValueError("target_sq_norms needs one value per row of correlations")

    @property
    def rows(self) -> int:
        return self.correlations.shape[0]

    @property
    def features(self) -> int:
        return self.gram.shape[0]

    def select(self, index: torch.Tensor | slice) -> LassoProblem:
        """The same design with a subset of the rows."""
        return LassoProblem(self.gram, self.correlations[index], self.target_sq_norms[index])

    def lambda_max(self) -> torch.Tensor:
        """Per row, the smallest penalty whose solution is zero: ``||c_r||_inf``."""
        return self.correlations.abs().amax(dim=1) if self.features else self.target_sq_norms.new_zeros(self.rows)

    def gradient(self, weights: torch.Tensor) -> torch.Tensor:
        """``q = c - G w = M^T (z - M w)`` for every row."""
        return self.correlations - weights @ self.gram

    def loss(self, weights: torch.Tensor) -> torch.Tensor:
        """``1/2 ||M w - z||^2`` per row (from the statistics)."""
        fit = (weights @ self.gram * weights).sum(dim=1)
        return (0.5 * self.target_sq_norms - (self.correlations * weights).sum(dim=1) + 0.5 * fit).clamp_min(0)


def ridge_delta(gram: torch.Tensor, ridge: float) -> float:
    """The ridge ``delta`` added to ``G``: ``ridge`` times the mean positive diagonal (0 without one)."""
    diagonal = gram.diagonal()
    positive = diagonal[diagonal > 0]
    return ridge * float(positive.mean()) if positive.numel() else 0.0


def lasso_objective(problem: LassoProblem, weights: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``1/2 ||M w - z||^2 + lam ||w||_1`` per row."""
    return problem.loss(weights) + lam * weights.abs().sum(dim=1)


def kkt_violation(problem: LassoProblem, weights: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Largest violation of the LASSO optimality conditions per row, relative to ``lam``.

    With ``q = c - G w``: ``q_j = lam sign(w_j)`` on the support and ``|q_j| <= lam`` off it.
    """
    gradient = problem.gradient(weights)
    on = weights != 0
    scale = lam.clamp_min(torch.finfo(lam.dtype).tiny)[:, None]
    violation = torch.where(on, (gradient - lam[:, None] * torch.sign(weights)).abs(), (gradient.abs() - lam[:, None]).clamp_min(0))
    return (violation / scale).amax(dim=1) if weights.shape[1] else lam.new_zeros(lam.shape)
