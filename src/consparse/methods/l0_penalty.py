"""``method=l0_penalty``: the penalised L0 baseline (Louizos et al. 2018, the density normalised as
in Gallego-Posada et al. 2022): the gates, loss and purge of ``method=l0`` with a fixed
``penalty * expected density`` term instead of Lagrange multipliers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from consparse.data.info import DatasetInfo
from consparse.errors import ParameterError
from consparse.methods.l0 import HardConcreteMethod, per_constraint
from consparse.validation import check_range


class L0PenaltyMethod(HardConcreteMethod):
    """Penalised L0: ``loss + penalty * expected density``; no target (results show where it lands).

    Args:
        penalty: a number >= 0 (penalises the model density) or a list with one number per gated
            layer (penalises each layer's density).
        target_density: must stay null (this method takes no target).
        **kwargs: see ``HardConcreteMethod``.
    """

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        penalty: float | Sequence[float] = 1e-2,
        target_density: None = None,
        **kwargs: Any,
    ) -> None:
        if target_density is not None:
            raise ParameterError(
                "target_density",
                f"got {target_density!r}; l0_penalty takes no target (it penalises the expected density with "
                "method.penalty). Use method=l0 to ask for a density",
            )
        super().__init__(model, info, **kwargs)
        penalties, self.layerwise = per_constraint(
            "penalty", penalty, self.gated_names, lambda f, v: check_range(f, v, 0.0)
        )
        self.register_buffer("penalties", torch.tensor(penalties), persistent=False)

    def density_term(self, densities: torch.Tensor) -> torch.Tensor:
        return (self.penalties * densities).sum()

    def method_metrics(self) -> dict[str, Any]:
        return {**super().method_metrics(), "penalty": self.penalties.tolist()}
