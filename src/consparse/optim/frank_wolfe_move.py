"""One constrained param group's Frank-Wolfe or pairwise step, for ``FrankWolfe``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.optim.constraints.base import ConstraintSet


@dataclass
class Move:
    """One constrained group's step: ``theta <- theta + min(eta, weight) * direction``.

    ``direction`` is ``V - theta`` (Frank-Wolfe) or ``V - a`` (pairwise, with ``away`` the atom
    ``a`` and ``weight`` its weight, per row for row-wise sets, which caps the step so that the
    iterate stays in the set).
    """

    params: list[torch.Tensor]
    constraint: ConstraintSet
    m: torch.Tensor
    vertex: torch.Tensor
    direction: torch.Tensor
    step: int
    away: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def gradient(self) -> torch.Tensor:
        """The raw gradient in the constraint's shape (the short step's decrease test is on the batch loss)."""
        return joined([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params], self.constraint)

    def step_in_place(self, eta: float | torch.Tensor) -> None:
        """``apply`` without returning the step taken: a Frank-Wolfe step on a single tensor (the usual
        group) is one in-place ``lerp_`` on it, not a new tensor copied back; the optimiser takes one
        such step per group and iteration, and on a GPU each extra kernel launch costs as much as the step."""
        theta = joined(self.params, self.constraint)
        if self.away is None and len(self.params) == 1 and theta.data_ptr() == self.params[0].data_ptr():
            theta.lerp_(self.vertex, eta)
        else:
            self.apply(eta)

    def apply(self, eta: float | torch.Tensor) -> torch.Tensor:
        """Take the step in place; returns the step taken (new minus old, in the constraint's shape)."""
        theta = joined(self.params, self.constraint)
        if self.away is None:
            new = torch.lerp(theta, self.vertex, eta)
        else:
            if not isinstance(eta, torch.Tensor):
                eta = torch.full((), eta, dtype=theta.dtype, device=theta.device)
            eta_rows = torch.minimum(eta.to(theta.dtype), self.weight)
            new = theta + eta_rows * self.direction
            # A drop step removes the away atom exactly (a rounding residue would keep its entries alive).
            dropped = (eta_rows >= self.weight) & (self.away != 0) & (self.vertex == 0)
            new = torch.where(dropped, torch.zeros_like(new), new)
        taken = new - theta
        self.restore(new)
        return taken

    def restore(self, values: torch.Tensor) -> None:
        """Write ``values`` (any shape with the group's entry count) back into the group's tensors."""
        flat = values.reshape(-1)
        for p, value in zip(self.params, torch.split(flat, [p.numel() for p in self.params])):
            p.copy_(value.reshape(p.shape))


def joined(tensors: list[torch.Tensor], constraint: ConstraintSet) -> torch.Tensor:
    """The group's tensors as one tensor of the constraint's shape (a view for a single contiguous tensor)."""
    if len(tensors) == 1:
        return tensors[0].reshape(constraint.shape)
    return torch.cat([t.reshape(-1) for t in tensors]).reshape(constraint.shape)
