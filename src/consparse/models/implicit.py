"""The implicit model ``X = relu(A X + B u), y = C X + D u`` as a plain ``nn.Module`` (``model=implicit``).

Batch-first: for inputs ``U`` (samples x p, flattened; with ``bias`` a constant 1 is appended, so
biases live in the last column of ``B`` and ``D``) the states are the fixed point
``X = relu(X A^T + U B^T)`` and the logits ``X C^T + U D^T``. The forward solves the fixed point
without an autograd graph and differentiates through it implicitly (``consparse.implicit.function``).

Well-posedness: ``||A||_inf = max_i sum_j |A_ij| <= kappa < 1`` makes the map a contraction in the
infinity norm for every input, so the fixed point exists, is unique and Picard iteration finds it.
``kappa`` is that radius; ``project_()`` projects ``A`` onto it (row-wise L1 balls) and ``init``
starts inside it. Nothing enforces it during the forward: a method that trains ``A`` keeps it
feasible (projection, Frank-Wolfe), and the fixed-point statistics report what happened.

Fixed-point statistics of the latest forward (and backward) stay on the module
(``last_solve``), and ``fixed_point_summary()`` aggregates every forward since
``reset_fixed_point_summary()`` so that methods can report iterations, residuals and convergence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from consparse.errors import ConsparseError, ParameterError
from consparse.implicit.function import SolveRecord, equilibrium
from consparse.implicit.projection import project_rows_l1, row_l1_norms
from consparse.implicit.solvers import FixedPointSettings, FixedPointStats
from consparse.validation import check_choice, check_int, check_range

INITS = ("default", "zeros")
NONCONVERGENCE_POLICIES = ("warn", "error", "ignore")


class FixedPointError(ConsparseError):
    """The equilibrium diverged (non-finite states) or did not converge where convergence is required."""


class FixedPointSummary:
    """Aggregate of the forward solves since the last reset: what ``method_metrics`` reports."""

    def __init__(self) -> None:
        self.forwards = 0
        self.samples = 0
        self.iteration_sum = 0.0
        self.max_iterations = 0
        self.max_residual = 0.0
        self.max_relative_residual = 0.0
        self.all_converged = True

    def add(self, stats: FixedPointStats) -> None:
        self.forwards += 1
        self.samples += stats.samples
        self.iteration_sum += stats.mean_iterations * stats.samples
        self.max_iterations = max(self.max_iterations, stats.iterations)
        self.max_residual = max(self.max_residual, stats.max_residual)
        self.max_relative_residual = max(self.max_relative_residual, stats.max_relative_residual)
        self.all_converged = self.all_converged and stats.converged

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "forwards": self.forwards,
            "samples": self.samples,
            "mean_iterations": self.iteration_sum / self.samples if self.samples else 0.0,
            "max_iterations": self.max_iterations,
            "max_residual": self.max_residual,
            "max_relative_residual": self.max_relative_residual,
            "converged": self.all_converged,
        }


class ImplicitModel(nn.Module):
    """Implicit model with parameters ``A (n x n)``, ``B (n x p')``, ``C (k x n)``, ``D (k x p')``.

    Args:
        input_shape: shape of one sample (flattened to ``p`` features).
        num_classes: ``k``, the number of outputs.
        state_size: ``n``, the number of hidden states.
        kappa: well-posedness radius in (0, 1): ``init`` and ``project_()`` keep ``||A||_inf <= kappa``.
        bias: append a constant 1 to the input (``p' = p + 1``), so that ``B`` and ``D`` carry biases.
        init: ``default`` (A uniform in +-kappa/n, so rows have L1 norm about kappa/2; B, C, D
            uniform in +-1/sqrt(fan_in) as ``nn.Linear``) or ``zeros``.
        max_iter, rtol, atol, anderson_memory, anderson_damping: forward fixed-point solver
            (``consparse.implicit.solvers.FixedPointSettings``).
        backward_max_iter, backward_rtol, backward_atol: adjoint solver (null: as the forward).
        on_nonconvergence: ``warn`` (record it and warn once), ``error`` (raise FixedPointError) or
            ``ignore`` (only record it). Non-finite states always raise FixedPointError.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        state_size: int = 300,
        kappa: float = 0.95,
        bias: bool = True,
        init: str = "default",
        max_iter: int = 300,
        rtol: float = 1e-5,
        atol: float = 1e-8,
        anderson_memory: int = 0,
        anderson_damping: float = 1.0,
        backward_max_iter: int | None = None,
        backward_rtol: float | None = None,
        backward_atol: float | None = None,
        on_nonconvergence: str = "warn",
    ) -> None:
        super().__init__()
        check_int("state_size", state_size, 1)
        check_int("num_classes", num_classes, 1)
        check_range("kappa", kappa, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_choice("init", init, INITS)
        check_choice("on_nonconvergence", on_nonconvergence, NONCONVERGENCE_POLICIES)
        if not isinstance(bias, bool):
            raise ParameterError("bias", f"expected true or false, got {bias!r}")
        self.input_shape = [int(d) for d in input_shape]
        self.input_size = math.prod(self.input_shape)
        self.num_classes = int(num_classes)
        self.state_size = int(state_size)
        self.kappa = float(kappa)
        self.bias = bias
        self.init = init
        self.on_nonconvergence = on_nonconvergence
        self.forward_settings = FixedPointSettings(max_iter, rtol, atol, anderson_memory, anderson_damping)
        self.forward_settings.validate()
        self.backward_settings = FixedPointSettings(
            backward_max_iter if backward_max_iter is not None else max_iter,
            backward_rtol if backward_rtol is not None else rtol,
            backward_atol if backward_atol is not None else atol,
            anderson_memory,
            anderson_damping,
        )
        self.backward_settings.validate("backward_")
        width = self.input_width
        n, k = self.state_size, self.num_classes
        self.A = nn.Parameter(torch.zeros(n, n))
        self.B = nn.Parameter(torch.zeros(n, width))
        self.C = nn.Parameter(torch.zeros(k, n))
        self.D = nn.Parameter(torch.zeros(k, width))
        if init == "default":
            with torch.no_grad():
                self.A.uniform_(-self.kappa / n, self.kappa / n)
                self.B.uniform_(-1 / math.sqrt(width), 1 / math.sqrt(width))
                self.C.uniform_(-1 / math.sqrt(n), 1 / math.sqrt(n))
                self.D.uniform_(-1 / math.sqrt(width), 1 / math.sqrt(width))
        self.last_solve = SolveRecord()
        self._summary = FixedPointSummary()
        self._warned = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_matrices(
        cls,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor,
        input_shape: Sequence[int],
        kappa: float = 0.95,
        bias: bool = True,
        **solver_options: Any,
    ) -> ImplicitModel:
        """A model holding copies of the given matrices (their dtype and device are kept)."""
        n, k = A.shape[0], C.shape[0]
        model = cls(input_shape, k, state_size=n, kappa=kappa, bias=bias, init="zeros", **solver_options)
        expected = {"A": (n, n), "B": (n, model.input_width), "C": (k, n), "D": (k, model.input_width)}
        for name, matrix in zip("ABCD", (A, B, C, D)):
            if tuple(matrix.shape) != expected[name]:
                raise ValueError(f"{name} has shape {tuple(matrix.shape)}, expected {expected[name]}")
        model.to(device=A.device, dtype=A.dtype)
        with torch.no_grad():
            for name, matrix in zip("ABCD", (A, B, C, D)):
                getattr(model, name).copy_(matrix)
        return model

    @classmethod
    def from_sequential(
        cls,
        net: nn.Module,
        kappa: float = 0.95,
        constrain: str = "row",
        input_shape: Sequence[int] | None = None,
        **solver_options: Any,
    ) -> ImplicitModel:
        """The exact implicit form of a Linear/ReLU network (see ``consparse.implicit.convert``)."""
        from consparse.implicit.convert import sequential_to_matrices

        converted = sequential_to_matrices(net, kappa, constrain, input_shape)
        return cls.from_matrices(
            converted.A, converted.B, converted.C, converted.D, converted.input_shape,
            kappa=kappa, bias=converted.bias, **solver_options,
        )

    # ------------------------------------------------------------------ shape
    @property
    def input_width(self) -> int:
        """Columns of ``B`` and ``D``: the flattened input plus the constant 1 when ``bias``."""
        return self.input_size + int(self.bias)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``(samples, p')``: flattened inputs with the constant column when ``bias``."""
        flat = x.reshape(x.shape[0], -1).to(self.A.dtype)
        if flat.shape[1] != self.input_size:
            raise ValueError(f"the implicit model takes {self.input_size} input features, got {flat.shape[1]}")
        if not self.bias:
            return flat
        return torch.cat([flat, flat.new_ones(flat.shape[0], 1)], dim=1)

    # ------------------------------------------------------------------ forward
    def states(self, x: torch.Tensor) -> torch.Tensor:
        """The equilibrium states ``X`` for a batch ``x`` (samples x n)."""
        return self._states(self.augment(x))

    def _states(self, inputs: torch.Tensor) -> torch.Tensor:
        record = SolveRecord()
        states = equilibrium(self.A, self.B, inputs, self.forward_settings, self.backward_settings, record)
        self.last_solve = record
        stats = record.forward
        assert stats is not None
        self._summary.add(stats)
        self._check(stats, states)
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = self.augment(x)
        states = self._states(inputs)
        return states @ self.C.T + inputs @ self.D.T

    def _check(self, stats: FixedPointStats, states: torch.Tensor) -> None:
        if states.is_meta:
            return  # shapes only: there are no values to check
        if not bool(torch.isfinite(states).all()):
            raise FixedPointError(
                f"the implicit forward diverged (non-finite states after {stats.iterations} iterations); "
                f"||A||_inf = {self.well_posedness():.4g} must stay below 1 (model.kappa={self.kappa})"
            )
        if stats.converged or self.on_nonconvergence == "ignore":
            return
        message = (
            f"the implicit forward did not converge in {stats.iterations} iterations: max residual "
            f"{stats.max_residual:.3g} ({stats.max_relative_residual:.3g} x the tolerance); "
            f"||A||_inf = {self.well_posedness():.4g}. Raise model.max_iter or lower ||A||_inf."
        )
        if self.on_nonconvergence == "error":
            raise FixedPointError(message)
        if not self._warned:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            self._warned = True

    # ------------------------------------------------------------------ statistics
    def fixed_point_summary(self) -> dict[str, float | int | bool]:
        """Forward solves since the last reset: mean/max iterations, max residuals, all converged."""
        return self._summary.as_dict()

    def reset_fixed_point_summary(self) -> None:
        self._summary = FixedPointSummary()

    # ------------------------------------------------------------------ well-posedness
    def well_posedness(self) -> float:
        """``||A||_inf``: the contraction factor of the forward map (well-posed below 1)."""
        return float(row_l1_norms(self.A.detach()).max()) if self.state_size else 0.0

    def project_(self) -> ImplicitModel:
        """Project ``A`` in place onto ``{||A||_inf <= kappa}`` (exact, row-wise)."""
        with torch.no_grad():
            self.A.copy_(project_rows_l1(self.A, self.kappa))
        return self

    # ------------------------------------------------------------------ platform seams
    def sparsifiable_weights(self) -> dict[str, torch.Tensor]:
        """All four matrices: the density of an implicit model is over ``A, B, C, D``."""
        return {"A": self.A, "B": self.B, "C": self.C, "D": self.D}

    def macs_per_sample(self, sparse: bool = True) -> int:
        """Multiply-accumulates of one sample's forward.

        ``count(A) * iterations + count(B) + count(C) + count(D)`` where ``count`` is the nonzero
        count (``sparse``) or the size, and ``iterations`` is the per-sample mean of fixed-point
        iterations of the latest forward (each iteration multiplies by ``A`` once; ``B u`` is
        computed once). Before any forward, ``max_iter`` is used.
        """
        def count(tensor: torch.Tensor) -> int:
            return int(torch.count_nonzero(tensor.detach())) if sparse else tensor.numel()

        stats = self.last_solve.forward
        iterations = stats.mean_iterations if stats is not None else float(self.forward_settings.max_iter)
        return round(count(self.A) * iterations) + count(self.B) + count(self.C) + count(self.D)

    @property
    def export_spec(self) -> dict[str, Any]:
        """The Hydra node that rebuilds this model's skeleton (same sizes and solver settings)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self.constructor_kwargs()}

    def constructor_kwargs(self) -> dict[str, Any]:
        forward, backward = self.forward_settings, self.backward_settings
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "state_size": self.state_size,
            "kappa": self.kappa,
            "bias": self.bias,
            "init": "zeros",
            "max_iter": forward.max_iter,
            "rtol": forward.rtol,
            "atol": forward.atol,
            "anderson_memory": forward.anderson_memory,
            "anderson_damping": forward.anderson_damping,
            "backward_max_iter": backward.max_iter,
            "backward_rtol": backward.rtol,
            "backward_atol": backward.atol,
            "on_nonconvergence": self.on_nonconvergence,
        }

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, state_size={self.state_size}, num_classes={self.num_classes}, "
            f"kappa={self.kappa}, bias={self.bias}"
        )
