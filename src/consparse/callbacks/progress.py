"""How long a run trained, and one line per epoch where no progress bar is shown."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch


class TrainTimer(pl.Callback):
    """Wall-clock seconds spent in ``fit``, accumulated across resumed invocations via the checkpoint.

    ``fit_record`` gives the epochs and seconds of the fit also when it ran in processes that a
    spawn-based strategy (``ddp_spawn``) started: there the hooks run in the workers, and of their
    state Lightning sends only ``callback_metrics`` back to the main process, so ``on_fit_end``
    leaves the two figures there.
    """

    EPOCHS_KEY = "consparse/fit_epochs"
    SECONDS_KEY = "consparse/fit_seconds"

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = self.elapsed
        self._started = None
        trainer.callback_metrics[self.EPOCHS_KEY] = torch.tensor(trainer.current_epoch)
        trainer.callback_metrics[self.SECONDS_KEY] = torch.tensor(self.seconds, dtype=torch.float64)

    @property
    def elapsed(self) -> float:
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.seconds + running

    def fit_record(self, trainer: pl.Trainer) -> tuple[int, float]:
        """``(epochs completed, seconds in fit)`` of the trainer's fit, wherever it ran."""
        metrics = trainer.callback_metrics
        if self.SECONDS_KEY in metrics:
            return int(metrics[self.EPOCHS_KEY]), float(metrics[self.SECONDS_KEY])
        return int(trainer.current_epoch), self.elapsed

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict.get("seconds", 0.0))


class EpochSummary(pl.Callback):
    """One line per epoch on stdout, for logs where a progress bar would flood (SLURM, CI)."""

    def __init__(self, timer: TrainTimer) -> None:
        self.timer = timer

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Callbacks run before the module's own epoch-end hook, which logs (then resets) the training
        # metrics. Summing them over DDP ranks is a collective, so every rank asks; rank 0 prints.
        metrics = {**trainer.callback_metrics}
        if hasattr(pl_module, "epoch_metric_values"):
            metrics.update(pl_module.epoch_metric_values("train"))
        if not trainer.is_global_zero:
            return
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.4f}")
        parts.append(f"{self.timer.elapsed:.1f}s")
        print("  ".join(parts), file=sys.stdout, flush=True)
