"""What every state-matching formulation shares: its settings and the interface a method drives.

A formulation takes a trained teacher and a loader of training samples, accumulates the LASSO
statistics of the rows it refits (``blocks``, identical on every DDP rank), maps a radius ``kappa``
to each row's radius (``radii``) and turns solved rows into a deployed model whose read-out is
refitted on regenerated states (``build``). ``consparse.methods.implicit_lasso.state_matching`` is the paper's
implicit form of a Linear/ReLU network; ``consparse.methods.implicit_lasso.layerwise`` matches a conv net layer by
layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from consparse.implicit.convert import BOUNDED_ROWS
from consparse.lasso.solution import ConstrainedLassoSolution
from consparse.methods.implicit_lasso.readout import ReadoutSettings
from consparse.methods.implicit_lasso.refit import RowBlock
from consparse.validation import check_choice, check_range

# Precision of every formulation's LASSO statistics and solves.
DTYPE = torch.float64


@dataclass(frozen=True)
class MatchingSettings:
    """Settings shared by the formulations.

    Attributes:
        conversion_kappa: the largest row L1 norm of each layer after the exact rescaling, in (0, 1);
            a radius ``kappa`` equal to it admits the teacher's own rows.
        constrain: ``row`` (the whole row in the radius) or ``A`` (only the part on the states;
            the layer-wise form leaves the bias out).
        readout: how the read-out is refitted.
        fixed_point: ``ImplicitModel`` solver options of the deployed model (max_iter, rtol, atol,
            anderson_memory, anderson_damping, on_nonconvergence).
    """

    conversion_kappa: float = 0.95
    constrain: str = "row"
    readout: ReadoutSettings = field(default_factory=ReadoutSettings)
    fixed_point: dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix: str = "") -> None:
        check_range(f"{prefix}conversion_kappa", self.conversion_kappa, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_choice(f"{prefix}constrain", self.constrain, BOUNDED_ROWS)
        self.readout.validate(f"{prefix}readout.")


class StateMatching(Protocol):
    """The interface ``method=implicit_lasso`` drives (see the module doc)."""

    formulation: str
    blocks: list[RowBlock]
    samples: int
    hidden_parameters: int

    def radii(self, kappa: float) -> list[torch.Tensor]:
        """Each block's per-row radius for the radius ``kappa``."""
        ...

    def build(self, solutions: list[ConstrainedLassoSolution], kappa: float) -> nn.Module:
        """The deployed model from the solved rows (read-out refitted); float64 on the statistics' device."""
        ...

    def metrics(self) -> dict[str, Any]:
        """Formulation-specific figures for ``method_metrics``."""
        ...
