"""State matching of a transformer's classification head on the transformer's features.

The paper's 20 Newsgroups experiment sparsifies a fine-tuned DistilBERT through its classifier:
the encoder is kept as trained, and the head (``Linear -> ReLU -> Dropout -> Linear`` on the first
token's features, ``consparse.models.transformer``) is converted to an implicit model and refitted
exactly as an mlp is (``consparse.methods.implicit_lasso.state_matching``), with the encoder's
features of the training samples as the input ``u``. The features are computed once, in eval mode,
and kept on the device (samples x hidden width), since every ``build`` iterates them again. The
deployed model is the teacher with its head replaced by the refitted implicit model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from consparse.lasso.search import ConstrainedLassoSolution
from consparse.methods.implicit_lasso.matching import MatchingSettings
from consparse.methods.implicit_lasso.state_matching import ImplicitStateMatching


def has_head(model: nn.Module) -> bool:
    """Whether ``model`` is an encoder with a separate head (``features(x)`` feeds ``head``)."""
    return callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), nn.Module)


class HeadStateMatching:
    """State matching of ``teacher.head`` on ``teacher.features`` (``formulation: head``).

    Args as for ``consparse.methods.implicit_lasso.state_matching.ImplicitStateMatching``; the
    ``input_shape`` is the encoder's (token ids and mask) and is not used by the head.
    """

    formulation = "head"

    def __init__(
        self,
        teacher: nn.Module,
        loader: Iterable[Any],
        input_shape: Sequence[int],
        settings: MatchingSettings,
        device: torch.device,
    ) -> None:
        del input_shape  # the head's input is the encoder's feature width
        self.teacher = teacher
        with torch.no_grad():
            features = [(teacher.features(inputs.to(device)), targets) for inputs, targets in loader]
        width = features[0][0].shape[1]
        self.head = ImplicitStateMatching(teacher.head, features, [width], settings, device)
        self.blocks = self.head.blocks
        self.samples = self.head.samples
        self.hidden_parameters = self.head.hidden_parameters

    def radii(self, kappa: float) -> list[torch.Tensor]:
        return self.head.radii(kappa)

    def build(self, solutions: list[ConstrainedLassoSolution], kappa: float) -> nn.Module:
        implicit_head = self.head.build(solutions, kappa)
        student = copy.deepcopy(self.teacher).eval()
        student.head = implicit_head
        return student

    def metrics(self) -> dict[str, Any]:
        return self.head.metrics()
