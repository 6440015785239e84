"""Fully connected networks: the L0 paper's 784-300-100-10 MLP and the TF-IDF text MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from consparse.errors import ParameterError


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU`` for each hidden width, then a Linear classifier.

    The layers live in one ``nn.Sequential`` (``self.layers``) of standard modules so that shared
    code (gating, purging, conversion to an implicit model) can walk them without special cases.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in hidden]
        if any(w < 1 for w in widths):
            raise ParameterError("hidden", f"got {list(hidden)}; every width must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ParameterError("dropout", f"got {dropout}; allowed: [0, 1)")
        in_features = 1
        for dim in input_shape:
            in_features *= int(dim)
        modules: list[nn.Module] = [nn.Flatten()]
        for width in widths:
            modules += [nn.Linear(in_features, width, bias=bias), nn.ReLU()]
            if dropout > 0:
                modules.append(nn.Dropout(dropout))
            in_features = width
        modules.append(nn.Linear(in_features, num_classes, bias=bias))
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
