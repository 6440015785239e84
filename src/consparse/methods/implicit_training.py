"""What the methods that train an implicit model from scratch share (``implicit_fw``, ``implicit_pgd``).

Both train ``model=implicit`` (``consparse.models.implicit.ImplicitModel``) end to end through its
implicit backward and report the same figures, so that their runs compare line by line:

* well-posedness at every step: ``||A||_inf`` is read after every optimiser step and its maximum
  over training is reported next to ``model.kappa``;
* fixed-point convergence of the training steps: forward and adjoint (backward) solves aggregated
  over training (iterations, residuals, whether every solve converged) and per epoch; under DDP the
  run's aggregate is the union of the ranks' (each solves its share of every batch);
* the curve of validation accuracy against density over training: one point per validation epoch
  (density of A, B, C, D together and per matrix), logged as ``train/density*`` and kept in
  ``method_metrics["density_curve"]`` (saved in checkpoints, so a resumed run keeps its curve).

The dense reference (``SparseMethod``'s default) is the trained model itself counted dense: an
implicit model of the same state size with every entry of A, B, C, D nonzero, so
``density = nnz(A,B,C,D) / size``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from consparse.compress.count import nonzero_count, numel_count
from consparse.data.info import DatasetInfo
from consparse.implicit.function import SolveRecord
from consparse.implicit.projection import row_l1_norms
from consparse.methods.base import SparseMethod
from consparse.models.implicit import FixedPointSummary, ImplicitModel

MATRICES = ("A", "B", "C", "D")
CURVE_KEY = "implicit_density_curve"


class ImplicitTrainingMethod(SparseMethod):
    """A ``SparseMethod`` around an ``ImplicitModel`` with the shared bookkeeping of the module docstring.

    Args:
        model: an ``ImplicitModel`` (``model=implicit``; ``build_method`` refuses any other model).
        info: the dataset's description.
        **kwargs: ``SparseMethod``'s (``target_density``, ``optimizer``, ``scheduler``, ...).
    """

    requires_model = "implicit"

    def __init__(self, model: nn.Module, info: DatasetInfo, **kwargs: Any) -> None:
        super().__init__(model, info, **kwargs)
        self.implicit: ImplicitModel = model
        # The largest ||A||_inf seen after a step, kept on the device (read back only when reported).
        self.register_buffer(
            "_well_posedness_peak", torch.tensor(model.well_posedness(), dtype=torch.float64), persistent=False
        )
        self.steps_checked = 0
        self.density_curve: list[dict[str, Any]] = []
        # Solves of the training steps, over the run (kept in checkpoints) and over the current epoch.
        self.solves = {"forward": FixedPointSummary(), "backward": FixedPointSummary()}
        self.epoch_solves = {"forward": FixedPointSummary(), "backward": FixedPointSummary()}

    @property
    def max_well_posedness(self) -> float:
        """The largest ``||A||_inf`` after any training step so far (and at the start)."""
        return float(self._well_posedness_peak)

    @max_well_posedness.setter
    def max_well_posedness(self, value: float) -> None:
        self._well_posedness_peak.fill_(value)

    # ------------------------------------------------------------------ densities
    def matrix_densities(self) -> dict[str, float]:
        """Nonzero fraction of each of A, B, C, D."""
        return {name: nonzero_count([self.matrix(name)]) / self.matrix(name).numel() for name in MATRICES}

    def density(self) -> float:
        """Nonzeros of A, B, C, D over their size (the dense implicit model of the same state size)."""
        weights = self.implicit.sparsifiable_weights()
        return nonzero_count(weights) / numel_count(weights)

    def matrix(self, name: str) -> torch.Tensor:
        return getattr(self.implicit, name)

    # ------------------------------------------------------------------ hooks
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        loss = super().training_step(batch, batch_idx)
        # The training forward's record, for on_train_batch_end; its backward writes into the same record later.
        return {"loss": loss, "solve_record": self.implicit.last_solve}

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.epoch_solves = {"forward": FixedPointSummary(), "backward": FixedPointSummary()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.implicit.state_size:
            peak = row_l1_norms(self.implicit.A.detach()).max().to(self._well_posedness_peak)
            torch.maximum(self._well_posedness_peak, peak, out=self._well_posedness_peak)
        self.steps_checked += 1
        record: SolveRecord | None = outputs["solve_record"]
        if record is None:
            return
        for kind, stats in (("forward", record.forward), ("backward", record.backward)):
            if stats is not None:
                self.solves[kind].add(stats)
                self.epoch_solves[kind].add(stats)

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.trainer.world_size > 1:
            self.solves = {kind: _union_over_ranks(summary) for kind, summary in self.solves.items()}

    def epoch_figures(self) -> dict[str, float]:
        """Scalars logged at the end of each training epoch."""
        figures = {"train/density": self.density(), "train/A_inf_norm": self.implicit.well_posedness()}
        figures.update({f"train/density_{name}": value for name, value in self.matrix_densities().items()})
        for kind, summary in self.epoch_solves.items():
            if summary.samples:
                figures[f"train/{kind}_iterations"] = summary.as_dict()["mean_iterations"]
        return figures

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for name, value in self.epoch_figures().items():
            self.log(name, value, on_step=False, on_epoch=True, sync_dist=True, prog_bar=name == "train/density")

    def on_validation_epoch_end(self) -> None:
        values = self.epoch_metric_values("val")
        if not self.trainer.sanity_checking and "val/acc" in values:
            self.density_curve.append(
                {
                    "epoch": int(self.current_epoch) + 1,
                    "step": int(self.global_step),
                    "val_accuracy": float(values["val/acc"]),
                    "density": self.density(),
                    "per_matrix_density": self.matrix_densities(),
                }
            )
        super().on_validation_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CURVE_KEY] = {
            "curve": self.density_curve,
            "max_well_posedness": self.max_well_posedness,
            "steps_checked": self.steps_checked,
            "solves": {kind: vars(summary) for kind, summary in self.solves.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CURVE_KEY)
        if saved is not None:
            self.density_curve = list(saved["curve"])
            self.max_well_posedness = float(saved["max_well_posedness"])
            self.steps_checked = int(saved["steps_checked"])
            for kind, summary in saved.get("solves", {}).items():
                vars(self.solves[kind]).update(summary)

    # ------------------------------------------------------------------ the method seam
    def method_metrics(self) -> dict[str, Any]:
        model = self.implicit
        return {
            "state_size": model.state_size,
            "per_matrix_density": self.matrix_densities(),
            "per_matrix_nonzeros": {name: nonzero_count([self.matrix(name)]) for name in MATRICES},
            "well_posedness": {
                "kappa": model.kappa,
                "A_inf_norm": model.well_posedness(),
                "max_A_inf_norm_over_training": self.max_well_posedness,
                "steps_checked": self.steps_checked,
                "well_posed_every_step": self.max_well_posedness < 1.0,
            },
            "fixed_point": {
                "forward_tolerance": {"rtol": model.forward_settings.rtol, "atol": model.forward_settings.atol,
                                      "max_iter": model.forward_settings.max_iter},
                "training_forward": self.solves["forward"].as_dict(),
                "training_backward": self.solves["backward"].as_dict(),
            },
            "density_curve": list(self.density_curve),
        }


def _union_over_ranks(summary: FixedPointSummary) -> FixedPointSummary:
    """The summary of every rank's solves together (a collective: every rank calls it).

    ``forwards`` stays the number of training steps (each rank solved a part of every step's batch).
    """
    parts: list[dict[str, Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, vars(summary))
    union = FixedPointSummary()
    union.forwards = max(part["forwards"] for part in parts)
    union.samples = sum(part["samples"] for part in parts)
    union.iteration_sum = sum(part["iteration_sum"] for part in parts)
    union.max_iterations = max(part["max_iterations"] for part in parts)
    union.max_residual = max(part["max_residual"] for part in parts)
    union.max_relative_residual = max(part["max_relative_residual"] for part in parts)
    union.all_converged = all(part["all_converged"] for part in parts)
    return union
