"""The paper's formulation: a Linear/ReLU network as an implicit model, rows of ``[A B]`` refitted.

The teacher is converted exactly (``consparse.implicit.convert``); its states ``X`` and
pre-activations ``Z = A X + B u`` on the training samples give one design ``M = [X^T U^T]`` shared by
all ``n`` rows, and row ``i`` of ``[A B]`` becomes the constrained LASSO fit of ``z_i`` on ``M``.
Any row may use any state or input, so the refitted ``A`` is no longer block-triangular. The radius
``kappa`` is absolute, in the units of the converted model (each layer rescaled so that its largest
row has L1 norm ``conversion_kappa``, the paper's well-posed model): ``kappa < 1`` on every row
keeps the model well-posed (``||A||_inf <= kappa``), and ``kappa >= conversion_kappa`` admits the
teacher's own rows. ``(C, D)`` are
then refitted on the states the new ``(A, B)`` produce, with the teacher's logits as targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from consparse.implicit.convert import sequential_to_matrices
from consparse.lasso.solution import ConstrainedLassoSolution
from consparse.lasso.statistics import GramAccumulator
from consparse.methods.implicit_lasso.matching import DTYPE, MatchingSettings
from consparse.methods.implicit_lasso.readout import fit_readout
from consparse.methods.implicit_lasso.refit import RowBlock
from consparse.models.implicit import ImplicitModel


class ImplicitStateMatching:
    """State matching on the exact implicit form of a Linear/ReLU teacher (``formulation: implicit``).

    Args:
        teacher: the trained network (read only, eval mode).
        loader: training batches ``(inputs, targets)`` the states are extracted on (iterated again
            for every ``build``).
        input_shape: shape of one input sample.
        settings: conversion, constraint, read-out and deployed-solver settings.
        device: where the statistics live and the solves run.
    """

    formulation = "implicit"

    def __init__(
        self,
        teacher: nn.Module,
        loader: Iterable[Any],
        input_shape: Sequence[int],
        settings: MatchingSettings,
        device: torch.device,
    ) -> None:
        self.teacher = teacher
        self.loader = loader
        self.settings = settings
        self.device = device
        converted = sequential_to_matrices(teacher, settings.conversion_kappa, settings.constrain, input_shape)
        self.converted = converted
        self.hidden_parameters = converted.hidden_parameters
        self.exact = self._model(converted.A, converted.B, converted.C, converted.D, settings.conversion_kappa)
        n, width = self.exact.state_size, self.exact.input_width
        statistics = GramAccumulator(n + width, n, DTYPE, device)
        self.conversion_error = 0.0
        with torch.no_grad():
            for inputs, _ in loader:
                inputs = inputs.to(device)
                u = self.exact.augment(inputs)
                states = self.exact.states(inputs)
                statistics.add(torch.cat([states, u], dim=1), states @ self.exact.A.T + u @ self.exact.B.T)
                logits = states @ self.exact.C.T + u @ self.exact.D.T
                reference = self._teacher_logits(inputs)
                scale = float(reference.abs().max().clamp_min(1e-12))
                self.conversion_error = max(self.conversion_error, float((logits - reference).abs().max()) / scale)
        self.samples = statistics.samples
        # constrain=A counts only the coordinates on the states (the first n columns of M).
        mask = None if settings.constrain == "row" else torch.arange(n + width, device=device) < n
        self.blocks = [RowBlock("A,B", statistics.problem(), mask, free=torch.arange(n + width, device=device) >= n)]
        self.train_fixed_point: dict[str, Any] = {}

    def _model(self, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor, kappa: float) -> ImplicitModel:
        return ImplicitModel.from_matrices(
            A.to(self.device, DTYPE), B.to(self.device, DTYPE), C.to(self.device, DTYPE), D.to(self.device, DTYPE),
            self.converted.input_shape, kappa=kappa, bias=self.converted.bias, **self.settings.fixed_point,
        )

    def _teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.teacher(inputs.to(next(self.teacher.parameters()).dtype)).to(DTYPE)

    def radii(self, kappa: float) -> list[torch.Tensor]:
        return [torch.full((self.exact.state_size,), float(kappa), dtype=DTYPE, device=self.device)]

    def build(self, solutions: list[ConstrainedLassoSolution], kappa: float) -> ImplicitModel:
        n = self.exact.state_size
        weights = solutions[0].weights.to(self.device, DTYPE)
        model = self._model(weights[:, :n], weights[:, n:], self.exact.C, self.exact.D, kappa)
        readout = self.settings.readout
        with torch.no_grad():
            if readout.mode == "none":
                for inputs, _ in self.loader:
                    model.states(inputs.to(self.device))
            else:
                fit = self._readout_statistics(model)
                out = fit_readout(fit.problem(), readout)
                model.C.copy_(out[:, :n])
                model.D.zero_()
                if readout.inputs == "all":
                    model.D.copy_(out[:, n:])
                elif model.bias:
                    model.D[:, -1] = out[:, n]
        self.train_fixed_point = model.fixed_point_summary()
        model.reset_fixed_point_summary()
        return model

    def _readout_statistics(self, model: ImplicitModel) -> GramAccumulator:
        """``[X, U]`` (or ``[X, 1]``) of the regenerated states against the teacher's logits."""
        n, width = model.state_size, model.input_width
        if self.settings.readout.inputs == "all":
            extra = width
        else:
            extra = int(model.bias)
        statistics = GramAccumulator(n + extra, model.num_classes, DTYPE, self.device)
        for inputs, _ in self.loader:
            inputs = inputs.to(self.device)
            u = model.augment(inputs)
            states = model.states(inputs)
            statistics.add(torch.cat([states, u[:, width - extra:]], dim=1), self._teacher_logits(inputs))
        return statistics

    def metrics(self) -> dict[str, Any]:
        return {
            "conversion_scales": self.converted.scales,
            "conversion_error": self.conversion_error,
            "fixed_point_train": self.train_fixed_point,
        }
