"""Refitting the read-out (``C, D`` of an implicit model, or a network's classifier) to a teacher.

After the hidden rows have been refitted, the states the new model computes differ from the
teacher's; the read-out is fitted on those regenerated states with the teacher's logits as targets
(torchidl's ``regen_states``; worth several points of accuracy at high sparsity,
docs/calibration.md). ``lstsq`` is ridge-stabilised least squares, ``lasso`` a penalised LASSO at
``lambda_ratio`` times each output's ``lam_max``, ``none`` keeps the converted read-out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from consparse.lasso.path import solve_lasso
from consparse.lasso.problem import LassoProblem
from consparse.validation import check_choice, check_range

READOUT_MODES = ("lstsq", "lasso", "none")
READOUT_INPUTS = ("states", "all")


@dataclass(frozen=True)
class ReadoutSettings:
    """How the read-out is refitted.

    Attributes:
        mode: ``lstsq``, ``lasso`` or ``none``.
        inputs: what an implicit model's read-out sees: ``states`` (``C`` and the bias column of
            ``D``; the rest of ``D`` stays zero, as in the converted network) or ``all`` (``C`` and
            all of ``D``). A conv net's classifier always sees its features (and a bias).
        ridge: least-squares ridge relative to the mean diagonal of the Gram matrix.
        lambda_ratio: the LASSO penalty relative to each output's ``lam_max``.
    """

    mode: str = "lstsq"
    inputs: str = "states"
    ridge: float = 1e-8
    lambda_ratio: float = 1e-3

    def validate(self, prefix: str = "") -> None:
        check_choice(f"{prefix}mode", self.mode, READOUT_MODES)
        check_choice(f"{prefix}inputs", self.inputs, READOUT_INPUTS)
        check_range(f"{prefix}ridge", self.ridge, 0.0, 1.0)
        check_range(f"{prefix}lambda_ratio", self.lambda_ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def fit_readout(problem: LassoProblem, settings: ReadoutSettings) -> torch.Tensor:
    """The read-out weights (outputs x d) for the accumulated statistics, by ``settings.mode``.

    Columns that are zero on every sample (dead states) get exact zero weights.
    """
    if settings.mode == "lasso":
        weights, _ = solve_lasso(problem, settings.lambda_ratio * problem.lambda_max())
        return weights
    if settings.mode != "lstsq":
        raise ValueError(f"fit_readout does not fit mode {settings.mode!r}")
    diagonal = problem.gram.diagonal()
    live = (diagonal > 0).nonzero().flatten()
    weights = problem.correlations.new_zeros(problem.correlations.shape)
    if live.numel() == 0:
        return weights
    gram = problem.gram[live][:, live]
    ridge = settings.ridge * float(diagonal[live].mean())
    gram = gram + ridge * torch.eye(live.numel(), dtype=gram.dtype, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise ValueError("the read-out's Gram matrix is not positive definite; raise readout.ridge")
    weights[:, live] = torch.cholesky_solve(problem.correlations[:, live].T, factor).T
    return weights
