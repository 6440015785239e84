"""Sufficient statistics of least-squares fits, accumulated over batches of samples.

A state-matching fit regresses targets ``Z`` (samples x t) on a design ``M`` (samples x d). The
LASSO needs only ``M^T M``, ``M^T z_r`` and ``||z_r||^2``, so the samples stream through once and
never have to be held in memory (a conv layer's patches number samples x positions).
"""

from __future__ import annotations

import torch

from consparse.lasso.problem import LassoProblem


class GramAccumulator:
    """Running ``M^T M`` (d x d), ``Z^T M`` (t x d) and column sums of ``Z * Z`` (t,).

    Args:
        features: d, the columns of the design.
        targets: t, the columns of the targets (one LASSO row each).
        dtype, device: where the sums live (float64 keeps the Gram matrix of many samples exact
            enough for the path solver).
    """

    def __init__(self, features: int, targets: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> None:
        self.gram = torch.zeros(features, features, dtype=dtype, device=device)
        self.cross = torch.zeros(targets, features, dtype=dtype, device=device)
        self.target_sq_norms = torch.zeros(targets, dtype=dtype, device=device)
        self.samples = 0

    def add(self, design: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``design`` (b x d) and ``targets`` (b x t), any dtype and device."""
        if design.shape[0] != targets.shape[0]:
            raise ValueError(f"design has {design.shape[0]} samples but targets have {targets.shape[0]}")
        design = design.to(self.gram)
        targets = targets.to(self.gram)
        self.gram.addmm_(design.T, design)
        self.cross.addmm_(targets.T, design)
        self.target_sq_norms += (targets * targets).sum(dim=0)
        self.samples += design.shape[0]

    def problem(self) -> LassoProblem:
        """The accumulated statistics as one LASSO problem per target column."""
        # Rounding in the sum leaves the Gram matrix a few ulps from symmetric; the path assumes symmetry.
        gram = 0.5 * (self.gram + self.gram.T)
        return LassoProblem(gram, self.cross, self.target_sq_norms)
