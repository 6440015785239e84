"""What the methods trained by Frank-Wolfe share (``sfw``, ``implicit_fw``).

The optimiser must be ``consparse.optim.FrankWolfe`` (checked when the method is built), the hooks
reach it unwrapped from Lightning's ``LightningOptimizer``, and the Frank-Wolfe gap of every step is
summed on the device and logged once per epoch as its mean.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from consparse.errors import ParameterError
from consparse.methods.base import SparseMethod
from consparse.optim import FrankWolfe


class FrankWolfeMethod(SparseMethod):
    """A ``SparseMethod`` whose optimiser is ``FrankWolfe``; same arguments as the class it is mixed before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        factory = self.optimizer_factory
        target = factory.func if isinstance(factory, functools.partial) else factory
        if not (isinstance(target, type) and issubclass(target, FrankWolfe)):
            raise ParameterError(
                "optimizer",
                "this method needs the Frank-Wolfe optimiser (_target_: consparse.optim.FrankWolfe, _partial_: true)",
            )
        # The epoch's summed gaps and their steps: an accumulator over the epoch's batches, like the
        # loss totals, summed on the device (a log call per step costs more than a small model's
        # forward pass, and reading the value would force a device sync).
        self._gap_sum: torch.Tensor | None = None
        self._gap_steps = 0

    def frank_wolfe(self) -> FrankWolfe:
        """The optimiser the trainer drives (unwrapped from Lightning's ``LightningOptimizer``)."""
        optimizer = self.optimizers(use_pl_optimizer=False)
        return optimizer[0] if isinstance(optimizer, list) else optimizer

    def final_gaps(self) -> dict[str, float]:
        """The last step's Frank-Wolfe gap of each constrained group (empty before the first step)."""
        return {name: float(gap) for name, gap in self.frank_wolfe().frank_wolfe_gaps().items()}

    def epoch_gap(self) -> torch.Tensor | None:
        """The mean over this epoch's steps of the summed Frank-Wolfe gaps (None before the first step)."""
        return None if self._gap_sum is None else self._gap_sum / self._gap_steps

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._gap_sum = None
        self._gap_steps = 0

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        gaps = self.frank_wolfe().frank_wolfe_gaps()
        if gaps:
            total = torch.stack(list(gaps.values())).sum().detach()
            self._gap_sum = total if self._gap_sum is None else self._gap_sum + total
            self._gap_steps += 1
