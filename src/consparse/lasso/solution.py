"""The solution type every constrained-LASSO solver returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.lasso.problem import LassoProblem, kkt_violation

# Relative distance of ||w_K||_1 from the radius under which a solution counts as on the sphere.
ON_SPHERE = 1e-9


@dataclass
class ConstrainedLassoSolution:
    """Per-row result of a constrained LASSO ``min 1/2 ||M w - z||^2 s.t. ||w_K||_1 <= kappa``.

    Attributes:
        weights: solutions (rows x d), exact zeros off the supports.
        lam: the penalty of each returned solution.
        norm: ``||w_K||_1`` of each solution (computed from ``weights``).
        loss: ``1/2 ||M w - z||^2``.
        active: the constraint binds (the row did not stop at the penalty floor).
        on_sphere: ``||w_K||_1`` equals the radius (to rounding).
        steps: penalised solves (bisection steps) or active-set rounds spent on the row; ``path`` counts one.
        knots: knots of the path traversed over all those solves.
        kkt: largest violation of the penalised optimality conditions at ``lam`` (relative to it).
        exhausted: a solve ran out of knots or the search out of steps before the tolerance.
        fallback: the row was solved on the exact path because the active-set solver did not
            resolve it (always False for the path's own steps).
    """

    weights: torch.Tensor
    lam: torch.Tensor
    norm: torch.Tensor
    loss: torch.Tensor
    active: torch.Tensor
    on_sphere: torch.Tensor
    steps: torch.Tensor
    knots: torch.Tensor
    kkt: torch.Tensor
    exhausted: torch.Tensor
    fallback: torch.Tensor

    @staticmethod
    def assess(
        problem: LassoProblem,
        weights: torch.Tensor,
        lam: torch.Tensor,
        radius: torch.Tensor,
        floor: torch.Tensor,
        mask: torch.Tensor | None = None,
        **work: torch.Tensor,
    ) -> ConstrainedLassoSolution:
        """The solution for ``weights`` at penalties ``lam``: its norm, loss, optimality and status.

        ``floor`` is each row's penalty floor (a row at it has an inactive constraint); ``mask``
        the coordinates the radius counts (None: all); ``work`` the solver's ``steps``, ``knots``,
        ``exhausted`` and ``fallback`` (zeros / False when not given).
        """
        rows, device = weights.shape[0], weights.device
        counted = weights.abs() if mask is None else weights.abs() * mask.to(weights)
        norm = counted.sum(dim=1)
        on_sphere = (norm - radius).abs() <= ON_SPHERE * radius
        live = problem.lambda_max() > 0
        zeros = torch.zeros(rows, dtype=torch.long, device=device)
        false = torch.zeros(rows, dtype=torch.bool, device=device)
        return ConstrainedLassoSolution(
            weights=weights,
            lam=lam,
            norm=norm,
            loss=problem.loss(weights),
            active=((lam > floor * (1 + 1e-9)) | on_sphere) & live,
            on_sphere=on_sphere,
            steps=work.get("steps", zeros),
            knots=work.get("knots", zeros),
            kkt=kkt_violation(problem, weights, lam),
            exhausted=work.get("exhausted", false),
            fallback=work.get("fallback", false),
        )

    @staticmethod
    def concatenate(parts: list[ConstrainedLassoSolution]) -> ConstrainedLassoSolution:
        names = ConstrainedLassoSolution.__dataclass_fields__
        return ConstrainedLassoSolution(**{name: torch.cat([getattr(part, name) for part in parts]) for name in names})

    def to(self, device: torch.device | str) -> ConstrainedLassoSolution:
        names = ConstrainedLassoSolution.__dataclass_fields__
        return ConstrainedLassoSolution(**{name: getattr(self, name).to(device) for name in names})
