"""The run's checkpoints, ``last.ckpt`` and ``previous.ckpt``, holding every random generator's
state too, so that a resumed run is the uninterrupted one."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from consparse.callbacks.divergence import non_finite_tensors
from consparse.run_dir import LAST_CHECKPOINT, rotate_checkpoints

log = logging.getLogger(__name__)


class RandomState(pl.Callback):
    """Saves every random generator in the checkpoint and restores it on resume, so a resumed run draws
    the same shuffles, dropout masks and gate samples as an uninterrupted one.

    Covered: Python's ``random``, NumPy's global generator, torch's CPU generator and the CUDA
    generator of the process's device. The training loader's shuffle order is drawn from torch's
    generator when its iterator starts (``RandomSampler`` without a generator), and a
    ``DistributedSampler`` derives it from the seed and the epoch, so restoring the generators
    restores the sampler too. Under DDP the checkpoint holds rank 0's generators and every rank
    restores them on its own device: ``seed_everything`` gives every rank the same state, and the
    ranks draw alike, so rank 0's state is every rank's.

    Not covered: with loader worker processes (``dataset.num_workers > 0``) the workers persist
    across epochs and draw their seed once, when they start; a resumed run starts them again, so
    its next epochs are shuffled (and augmented) differently from an uninterrupted run.

    The state is applied as soon as Lightning reads the checkpoint, before it builds the optimisers:
    a step-wise scheduler asks for ``estimated_stepping_batches`` there, which starts the training
    loader's iterator (and draws its shuffle), as the epoch's start does in an uninterrupted run.
    The numpy state is stored as a tensor so that the checkpoint loads with ``weights_only=True``.
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        saved = state["numpy"]
        np.random.set_state((saved["name"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                             saved["has_gauss"], saved["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class RunCheckpoint(pl.callbacks.Checkpoint):
    """``checkpoints/last.ckpt`` and the one before it, ``checkpoints/previous.ckpt``.

    Saved at the start of every epoch after the first (the previous epoch complete: validated,
    logged and its learning-rate step taken, which a checkpoint written in ``on_train_epoch_end``
    misses), at the end of training, and at the current step when a signal stops the run
    (Lightning raises ``SIGTERMException`` at the end of the batch in progress; see
    ``consparse.interruption``). A resumed run therefore repeats no epoch after ``kill -9`` and no
    step after a signal.

    A checkpoint is written beside the others and renamed over ``last.ckpt`` (a crash while
    writing leaves the previous files whole), and never when a weight is not finite: the last
    finite checkpoint is what a diverged run keeps.

    At an epoch's start Lightning has already counted the epoch as ready; a checkpoint with that
    count resumes as "restarted on epoch start" and skips the epoch. The saved count is therefore
    set back by one, which makes the checkpoint the state at the end of the previous epoch (all it
    differs in), from which Lightning starts the next epoch afresh.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.saved_step: int | None = None
        self._at_epoch_start = False

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Resuming from it: saving the same step again would push the one before out of previous.ckpt.
        self.saved_step = int(checkpoint.get("global_step", -1))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:
            self._at_epoch_start = True
            try:
                self.save(trainer)
            finally:
                self._at_epoch_start = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._at_epoch_start:
            progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
            for counts in (progress["total"], progress["current"]):
                counts["ready"] -= 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.save(trainer)

    def save(self, trainer: pl.Trainer) -> Path | None:
        """Write the trainer's state to ``last.ckpt`` (the old one becomes ``previous.ckpt``); None when skipped."""
        if trainer.global_step == self.saved_step or trainer.sanity_checking:
            return None
        if non_finite_tensors(trainer.lightning_module):
            log.warning("not saving a checkpoint at step %d: some weights are not finite", trainer.global_step)
            return None
        last = self.directory / LAST_CHECKPOINT
        partial = self.directory / f".{LAST_CHECKPOINT}.partial"
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            rotate_checkpoints(self.directory, partial)
        trainer.strategy.barrier("consparse.RunCheckpoint.save")
        self.saved_step = trainer.global_step
        return last
