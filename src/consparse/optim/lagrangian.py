"""Lagrange multipliers for inequality constraints ``g_j(theta) <= 0``: projected dual ascent with restarts.

The Lagrangian is ``L(theta, lambda) = f(theta) + sum_j lambda_j g_j(theta)`` with ``lambda >= 0``.
Simultaneous gradient descent-ascent (Gallego-Posada et al. 2022) takes, per minibatch, a primal
step on ``f + sum_j lambda_j.detach() g_j`` and, from the same (pre-step) defects ``g``, a dual step

    lambda_j <- max(0, lambda_j + dual_lr * g_j),   and lambda_j <- 0 where g_j < 0 (dual restart).

The restart (Cooper, ``dual_restarts=True``, as the authors ran it) forgets the pressure that
accumulated while a constraint was violated as soon as it is strictly satisfied, which stops the
density from overshooting far below its target.

Written here rather than with Cooper (``cooper-optim``): Cooper v1 removed dual restarts for
Lagrange multipliers (cooper-org/cooper PR #88; they are needed here and on by default), and its
``roll()`` step owns the primal optimiser step, which Lightning's automatic optimisation already
owns. The update is three tensor operations.

The multipliers are buffers, so they are saved in checkpoints and resumed exactly. Under DDP the
defects are computed from parameters that DDP keeps identical, so every rank takes the same
dual step and the multipliers stay equal without communication. The term and the dual step run in
full precision inside ``torch.autocast`` (``consparse.precision``): the defects are small differences
of densities that bfloat16 would round away.
"""

from __future__ import annotations

import torch
from torch import nn

from consparse.precision import full_precision
from consparse.validation import check_int, check_range


class LagrangeMultipliers(nn.Module):
    """One non-negative multiplier per inequality constraint, updated by projected gradient ascent.

    Args:
        num_constraints: how many constraints ``g_j <= 0``.
        dual_lr: step size of the ascent on ``lambda`` (plain SGD, no momentum), > 0.
        restarts: reset ``lambda_j`` to 0 whenever constraint ``j`` is strictly satisfied.
    """

    def __init__(self, num_constraints: int, dual_lr: float, restarts: bool = True) -> None:
        super().__init__()
        check_int("num_constraints", num_constraints, 1)
        check_range("dual_lr", dual_lr, 0.0, low_inclusive=False)
        if not isinstance(restarts, bool):
            raise TypeError(f"restarts must be true or false, got {restarts!r}")
        self.dual_lr = float(dual_lr)
        self.restarts = restarts
        self.register_buffer("values", torch.zeros(num_constraints))

    @full_precision
    def lagrangian_term(self, defects: torch.Tensor) -> torch.Tensor:
        """``sum_j lambda_j g_j`` with ``lambda`` held fixed: its gradient is the primal gradient of the constraints."""
        self._check(defects)
        return (self.values.detach() * defects).sum()

    @torch.no_grad()
    @full_precision
    def update(self, defects: torch.Tensor) -> None:
        """One projected ascent step from the defects ``g`` measured before the primal step."""
        self._check(defects)
        defects = defects.detach().to(self.values)
        self.values.add_(defects, alpha=self.dual_lr)
        if self.restarts:
            self.values.masked_fill_(defects < 0, 0.0)
        self.values.clamp_(min=0.0)

    def _check(self, defects: torch.Tensor) -> None:
        if defects.shape != self.values.shape:
            raise ValueError(f"expected {tuple(self.values.shape)} defects, got {tuple(defects.shape)}")

    def extra_repr(self) -> str:
        return f"num_constraints={self.values.numel()}, dual_lr={self.dual_lr}, restarts={self.restarts}"
