"""``method=gmp``: gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

The network trains from the start and is pruned while it trains: from ``start_step`` to
``end_step``, every ``prune_every`` optimiser steps, the smallest-magnitude weights are zeroed so
that the density follows the cubic schedule

    d_t = d_f + (d_i - d_f) (1 - (t - t_0) / (n dt))^3,   t in {t_0, t_0 + dt, ..., t_0 + n dt}

(the paper's sparsity ``s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n dt))^3`` with ``d = 1 - s``): it
prunes fast while many weights are redundant and slowly near the target. Pruned weights are
re-zeroed after every optimiser step, and since zeros rank lowest a pruned weight stays pruned.
The steps after ``end_step`` train the final mask as the learning rate decays, and the last
``finetune_epochs`` of ``trainer.max_epochs`` are by default outside the schedule altogether.
Large studies (Gale et al. 2019, "The State of Sparsity in Deep Neural Networks"; Blalock et al.
2020, "What is the State of Neural Network Pruning?") found it the strongest simple baseline.

Defaults relative to the run (steps before the fine-tuning epochs, ``T``): start at ``T / 10``, end
at ``3 T / 4``, about 100 pruning events in between. Written here rather than with
``torch.nn.utils.prune``: its reparametrisation (``weight_orig`` and a mask buffer) renames the
weights every other part of the platform (counting, export, checkpoints) reads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from consparse.compress.prune import SCOPES, apply_masks, compute_masks, prune_to_density
from consparse.errors import ParameterError, config_key
from consparse.methods.base import Deployment, SparseMethod
from consparse.validation import check_choice, check_density, check_int

log = logging.getLogger(__name__)

# Fractions of the steps before fine-tuning where the schedule starts and ends when not given.
DEFAULT_START = 0.1
DEFAULT_END = 0.75
DEFAULT_EVENTS = 100


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu & Gupta's cubic density schedule, in optimiser steps.

    Args:
        start: ``t_0``, the first pruning step (density ``initial`` there).
        end: ``t_0 + n dt``, the step from which the density is ``final``.
        every: ``dt``, steps between pruning events (the last event is at ``end`` even when
            ``every`` does not divide ``end - start``).
        initial, final: ``d_i`` and ``d_f``, densities in (0, 1] with ``final <= initial``.
    """

    start: int
    end: int
    every: int
    initial: float
    final: float

    def density(self, step: int) -> float:
        """The density the model should have after pruning at ``step`` (1.0 before ``start``)."""
        if step < self.start:
            return 1.0
        if step >= self.end:
            return self.final
        last_event = self.start + (step - self.start) // self.every * self.every
        progress = (last_event - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3


def default_schedule(steps: int, final: float, initial: float = 1.0, start: int | None = None,
                     end: int | None = None, every: int | None = None) -> CubicSchedule:
    """The schedule over ``steps`` optimiser steps (those before fine-tuning), unset keys from the run length."""
    start = int(DEFAULT_START * steps) if start is None else start
    end = max(start + 1, math.ceil(DEFAULT_END * steps)) if end is None else end
    every = max(1, (end - start) // DEFAULT_EVENTS) if every is None else every
    if not 0 <= start < end:
        raise ParameterError("start_step", f"got start_step={start}, end_step={end}; need 0 <= start_step < end_step")
    if end > steps:
        raise ParameterError(
            "end_step",
            f"got {end}, but the run has {steps} optimiser steps before fine-tuning (trainer.max_epochs minus "
            "method.finetune_epochs); use a smaller end_step, or null for 3/4 of them",
        )
    return CubicSchedule(start, end, every, initial, final)


class GradualMagnitudeMethod(SparseMethod):
    """Gradual magnitude pruning to ``target_density`` along the cubic schedule.

    Args:
        target_density: final density ``d_f`` in (0, 1] (required).
        initial_density: ``d_i``, the density the first pruning event leaves, in [target, 1].
        start_step, end_step, prune_every: ``t_0``, ``t_0 + n dt`` and ``dt`` in optimiser steps;
            null: 1/10 and 3/4 of the steps before fine-tuning, and about 100 events.
        prune_scope: ``global`` (one magnitude ranking over all layers) or ``layer`` (the scheduled
            density in every layer).
        finetune_epochs: the last epochs of ``trainer.max_epochs``, trained with the final mask
            fixed and outside the schedule.
        **kwargs: ``optimizer``, ``scheduler``, ``scheduler_interval``, ``label_smoothing``.
    """

    def __init__(self, *args: Any, initial_density: float = 1.0, start_step: int | None = None,
                 end_step: int | None = None, prune_every: int | None = None, prune_scope: str = "global",
                 finetune_epochs: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.target_density is None:
            raise ParameterError("target_density", "gmp needs a target density in (0, 1]")
        check_density("initial_density", initial_density, allow_none=False)
        if initial_density < self.target_density:
            raise ParameterError("initial_density",
                              f"got {initial_density}, below method.target_density={self.target_density}; "
                              "the schedule only prunes, so it must start at or above the target")
        check_int("start_step", start_step, 0, allow_none=True)
        check_int("end_step", end_step, 1, allow_none=True)
        check_int("prune_every", prune_every, 1, allow_none=True)
        check_choice("prune_scope", prune_scope, SCOPES)
        check_int("finetune_epochs", finetune_epochs, 0)
        self.initial_density = float(initial_density)
        self.requested = {"start": start_step, "end": end_step, "every": prune_every}
        self.prune_scope = prune_scope
        self.finetune_epochs = finetune_epochs
        self.masks: dict[str, torch.Tensor] | None = None
        self.density_now = 1.0
        self.pruning_schedule: CubicSchedule | None = None

    def schedule(self) -> CubicSchedule:
        """The run's schedule, from the trainer's run length (raises ParameterError when it does not fit)."""
        max_epochs = int(self.trainer.max_epochs or 0)
        if self.finetune_epochs >= max_epochs:
            raise ParameterError("finetune_epochs",
                              f"{self.finetune_epochs} leaves no epoch to prune in within trainer.max_epochs={max_epochs}")
        steps_per_epoch = int(self.trainer.estimated_stepping_batches) / max_epochs
        steps = int(steps_per_epoch * (max_epochs - self.finetune_epochs))
        return default_schedule(steps, float(self.target_density), self.initial_density, **self.requested)

    def on_fit_start(self) -> None:
        with config_key(self.config_place):
            self.pruning_schedule = self.schedule()  # validated before the first batch

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        density = self.pruning_schedule.density(int(self.global_step))
        if density < self.density_now:
            self.masks = compute_masks(self.model, 1.0 - density, scope=self.prune_scope)
            apply_masks(self.model, self.masks)
            self.density_now = density

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.masks is not None:
            apply_masks(self.model, self.masks)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gmp"] = {"masks": self.masks, "density": self.density_now}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("gmp") or {}
        self.masks = state.get("masks")
        self.density_now = float(state.get("density", 1.0))

    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        """The trained model at ``target_density`` (already there unless training stopped before ``end_step``)."""
        if self.density_now > self.target_density and self.trainer.is_global_zero:
            log.warning("gmp stopped at density %.4g before its schedule's end; pruning to the target %s at once",
                        self.density_now, self.target_density)
        return self.deployment(prune_to_density(self.model.eval(), self.target_density, scope=self.prune_scope))

    def method_metrics(self) -> dict[str, Any]:
        schedule = self.pruning_schedule
        return {
            "prune_scope": self.prune_scope,
            "finetune_epochs": self.finetune_epochs,
            "initial_density": self.initial_density,
            "schedule": None if schedule is None else {"start_step": schedule.start, "end_step": schedule.end,
                                                       "prune_every": schedule.every},
            "density_before_finalize": self.density_now,
        }
