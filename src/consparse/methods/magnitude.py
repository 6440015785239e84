"""``method=magnitude``: train dense, prune by magnitude to ``target_density``, optionally fine-tune.

The run lasts ``trainer.max_epochs``; the last ``finetune_epochs`` of them train the pruned network
with its mask fixed (pruned weights are re-zeroed after every optimiser step). By default
(``finetune_epochs: null``) that is the second half, rounded down, so that ``magnitude`` differs from
``dense`` with the same ``target_density`` (train, prune, no retraining) wherever the epochs allow.
With no fine-tuning the pruning happens in ``finalize``: then the two are the same experiment.

``nm: "2:4"`` prunes to the N:M pattern instead (the N largest ``|w|`` of every M consecutive input
weights of every layer, ``consparse.nm_pattern``), the format Ampere / Hopper GPUs run faster;
``target_density`` is then null or N/M and ``prune_scope`` does not apply.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from consparse.compress.nm import nm_masks, nm_prune
from consparse.compress.prune import apply_masks, compute_masks, prune_to_density
from consparse.errors import ParameterError, config_key
from consparse.methods.base import Deployment, SparseMethod
from consparse.nm_pattern import NMPattern, parse_nm
from consparse.validation import check_choice, check_int

log = logging.getLogger(__name__)


def resolve_finetune_epochs(finetune_epochs: int | None, max_epochs: int) -> int:
    """The fine-tuning epochs a run takes: as given, or by default the second half of the run."""
    return max_epochs // 2 if finetune_epochs is None else finetune_epochs


class MagnitudeMethod(SparseMethod):
    """Magnitude pruning baseline (global or layer-wise) with optional fine-tuning epochs."""

    def __init__(
        self,
        *args,
        prune_scope: str = "global",
        finetune_epochs: int | None = None,
        nm: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.nm_pattern = None if nm is None else parse_nm(nm, "nm")
        if self.nm_pattern is not None:
            self.target_density = _nm_target(self.target_density, self.nm_pattern)
        if self.target_density is None:
            raise ParameterError("target_density", "magnitude pruning needs a target density in (0, 1]")
        check_choice("prune_scope", prune_scope, ["global", "layer"])
        check_int("finetune_epochs", finetune_epochs, 0, allow_none=True)
        self.prune_scope = prune_scope
        self.requested_finetune_epochs = finetune_epochs
        self.masks: dict[str, torch.Tensor] | None = None

    @property
    def finetune_epochs(self) -> int:
        return resolve_finetune_epochs(self.requested_finetune_epochs, int(self.trainer.max_epochs or 0))

    @property
    def prune_epoch(self) -> int:
        """The epoch at whose start the network is pruned (fine-tuning follows)."""
        max_epochs = int(self.trainer.max_epochs or 0)
        if self.finetune_epochs >= max_epochs:
            raise ParameterError(
                "finetune_epochs",
                f"{self.finetune_epochs} leaves no dense training within trainer.max_epochs={max_epochs}; "
                "use fewer fine-tuning epochs or more epochs",
            )
        return max_epochs - self.finetune_epochs

    def on_fit_start(self) -> None:
        if self.finetune_epochs:
            with config_key(self.config_place):
                _ = self.prune_epoch  # validates the epoch budget before the first batch
        elif self.trainer.is_global_zero:
            log.warning(
                "method.finetune_epochs is 0 (trainer.max_epochs=%s): magnitude prunes the trained network at the end "
                "without retraining, the same experiment as method=dense with method.target_density=%s",
                self.trainer.max_epochs, self.target_density,
            )

    def on_train_epoch_start(self) -> None:
        if self.finetune_epochs and self.masks is None and self.current_epoch >= self.prune_epoch:
            self.masks = self._masks()
            apply_masks(self.model, self.masks)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.masks is not None:
            apply_masks(self.model, self.masks)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["magnitude_masks"] = self.masks

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.masks = checkpoint.get("magnitude_masks")

    def _masks(self) -> dict[str, torch.Tensor]:
        if self.nm_pattern is not None:
            return nm_masks(self.model, self.nm_pattern)
        return compute_masks(self.model, 1.0 - self.target_density, scope=self.prune_scope)

    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        model = self.model.eval()
        if self.masks is not None:
            return self.deployment(model)
        if self.nm_pattern is not None:
            return self.deployment(nm_prune(model, self.nm_pattern))
        return self.deployment(prune_to_density(model, self.target_density, scope=self.prune_scope))

    def method_metrics(self) -> dict[str, Any]:
        return {
            "finetune_epochs": self.finetune_epochs,
            "prune_scope": self.prune_scope if self.nm_pattern is None else None,
            "nm": None if self.nm_pattern is None else str(self.nm_pattern),
        }


def _nm_target(target_density: float | None, pattern: NMPattern) -> float:
    """The target density of N:M pruning: N/M, which a given ``method.target_density`` must equal."""
    if target_density is not None and abs(target_density - pattern.density) > 1e-9:
        raise ParameterError(
            "target_density",
            f"{target_density} disagrees with method.nm={pattern} (density {pattern.density:g}); "
            f"set method.target_density={pattern.density:g} or null",
        )
    return pattern.density
