"""The equilibrium ``X = relu(X A^T + U B^T)`` as a differentiable function of ``(A, B, U)``.

Forward: a fixed-point solve without an autograd graph. Backward: the implicit function theorem.
With ``Z = X A^T + U B^T``, ``D = 1[Z > 0]`` and the upstream gradient ``G = dL/dX``, the adjoint
``V = dL/dZ`` solves the linear fixed point ``V = D * (V A + G)`` (batch-first form of
``v = D (A^T v + g)``), solved by the same per-sample fixed-point solver; then
``dL/dA = V^T X``, ``dL/dB = V^T U`` and ``dL/dU = V B``. With ``||A||_inf <= kappa < 1`` both the
forward and the adjoint iterations contract (``||D (A^T v)||_1 <= ||A||_inf ||v||_1``), so memory
is that of one batch of states, not of an unrolled graph. Forward and adjoint run in full precision
inside ``torch.autocast`` (``consparse.precision``); the readout after the states may not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from consparse.implicit.solvers import FixedPointSettings, FixedPointStats, solve_fixed_point
from consparse.precision import autocast_disabled, full_precision


@dataclass
class SolveRecord:
    """Where the solves of one forward (and its backward, if any) leave their statistics."""

    forward: FixedPointStats | None = None
    backward: FixedPointStats | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@full_precision
def solve_equilibrium(
    A: torch.Tensor, B: torch.Tensor, U: torch.Tensor, settings: FixedPointSettings
) -> tuple[torch.Tensor, FixedPointStats]:
    """The states ``X`` (samples x n) with ``X = relu(X A^T + U B^T)``, from ``X = 0``; no autograd."""
    with torch.no_grad():
        drive = U @ B.T
        transposed = A.T
        x0 = drive.new_zeros(drive.shape)
        return solve_fixed_point(lambda x: F.relu(x @ transposed + drive), x0, settings)


class ImplicitFunction(torch.autograd.Function):
    """``X = relu(X A^T + U B^T)`` with the adjoint (implicit) backward described in the module doc."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        A: torch.Tensor,
        B: torch.Tensor,
        U: torch.Tensor,
        forward_settings: FixedPointSettings,
        backward_settings: FixedPointSettings,
        record: SolveRecord,
    ) -> torch.Tensor:
        states, stats = solve_equilibrium(A, B, U, forward_settings)
        record.forward = stats
        ctx.save_for_backward(A, B, U, states)
        ctx.backward_settings = backward_settings
        ctx.record = record
        return states

    @staticmethod
    def backward(ctx: Any, grad_states: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        A, B, U, states = ctx.saved_tensors
        grad_states = grad_states.to(states.dtype)
        with torch.no_grad(), autocast_disabled():
            active = ((states @ A.T + U @ B.T) > 0).to(grad_states.dtype)
            driven = active * grad_states
            adjoint, stats = solve_fixed_point(
                lambda v: active * (v @ A) + driven, torch.zeros_like(grad_states), ctx.backward_settings
            )
            grad_A = adjoint.T @ states if ctx.needs_input_grad[0] else None
            grad_B = adjoint.T @ U if ctx.needs_input_grad[1] else None
            grad_U = adjoint @ B if ctx.needs_input_grad[2] else None
        ctx.record.backward = stats
        return grad_A, grad_B, grad_U, None, None, None


@full_precision
def equilibrium(
    A: torch.Tensor,
    B: torch.Tensor,
    U: torch.Tensor,
    forward_settings: FixedPointSettings,
    backward_settings: FixedPointSettings,
    record: SolveRecord,
) -> torch.Tensor:
    """The states for inputs ``U``; differentiable (implicitly) when autograd needs it."""
    needs_graph = torch.is_grad_enabled() and (A.requires_grad or B.requires_grad or U.requires_grad)
    if not needs_graph:
        states, stats = solve_equilibrium(A, B, U, forward_settings)
        record.forward = stats
        return states
    return ImplicitFunction.apply(A, B, U, forward_settings, backward_settings, record)
