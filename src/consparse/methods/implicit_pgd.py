"""``method=implicit_pgd``: the dense baseline of ``implicit_fw``, projected gradient on ``model=implicit``.

The same implicit model ``X = relu(A X + B u), y = C X + D u`` as ``implicit_fw``, from the model's
own (dense) initialisation, trained by an ordinary optimiser (Adam by default) through the implicit
backward, and kept well-posed by projecting ``A`` after every optimiser step onto
``{||A||_inf <= model.kappa}`` (the exact row-wise L1-ball projection, ``ImplicitModel.project_``,
as the IDL code does). The projection sets small entries of offending rows to exact zeros, so A may
end up slightly sparse; nothing else is. With ``target_density`` set, the deployed model is the
trained one magnitude-pruned globally over A, B, C, D (which keeps ``||A||_inf <= kappa``); the
compression curve prunes it without retraining.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from consparse.data.info import DatasetInfo
from consparse.methods.implicit_training import ImplicitTrainingMethod


class ImplicitPGDMethod(ImplicitTrainingMethod):
    """Projected gradient on an ``ImplicitModel``: an optimiser step, then ``A`` projected onto its ball.

    Args:
        model: an ``ImplicitModel`` (``model=implicit``).
        info: the dataset's description.
        target_density: null keeps the trained model; a fraction prunes it (global magnitude) for deployment.
        **kwargs: ``SparseMethod``'s (``optimizer``, ``scheduler``, ``scheduler_interval``, ``label_smoothing``).
    """

    def __init__(self, model: nn.Module, info: DatasetInfo, target_density: float | None = None, **kwargs: Any) -> None:
        super().__init__(model, info, target_density=target_density, **kwargs)
        self.implicit.project_()
        self.projections = 0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.implicit.project_()
        self.projections += 1

    def method_metrics(self) -> dict[str, Any]:
        return {**super().method_metrics(), "projection": "rows of A onto L1 balls of radius model.kappa",
                "projections": self.projections}
