"""Lightning callbacks the training entry adds to every run."""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from consparse.errors import ConfigError, TrainingDiverged
from consparse.run_dir import LAST_CHECKPOINT, rotate_checkpoints

log = logging.getLogger(__name__)


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


class RankAgreement(pl.Callback):
    """After fit, whether every DDP rank holds the same trained state; ``disagreeing`` names what differs.

    Compared: the module's parameters and persistent buffers (Lagrange multipliers, ...) except
    BatchNorm statistics (DDP hands rank 0's to every rank before each forward, so after the last
    step each rank holds its own update), and every optimiser's state (momenta, Frank-Wolfe step
    counts, ...). Each tensor is compared through two float64 checksums (sum and sum of squares),
    gathered in one collective; ranks that take the same steps agree exactly.
    ``disagreeing`` stays None in a single process.
    """

    def __init__(self) -> None:
        self.disagreeing: list[str] | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        names, values = [], []
        for name, tensor in _trained_state(pl_module, trainer.optimizers):
            exact = tensor.double()  # one tensor at a time: never a float64 copy of the whole model
            names.append(name)
            values.append(torch.stack([exact.sum(), exact.square().sum()]))
        if not values:
            self.disagreeing = []
            return
        local = torch.stack(values)
        parts = [torch.empty_like(local) for _ in range(trainer.world_size)]
        dist.all_gather(parts, local)
        gathered = torch.stack(parts)
        same = (gathered == gathered[0]) | (gathered.isnan() & gathered[0].isnan())
        differs = (~same).any(dim=2).any(dim=0).tolist()
        self.disagreeing = [name for name, different in zip(names, differs) if different]
        if self.disagreeing and trainer.is_global_zero:
            log.warning("DDP ranks ended the fit with different states: %s", ", ".join(self.disagreeing))


def _trained_state(module: nn.Module, optimizers: list[torch.optim.Optimizer]) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of what every rank must agree on (see ``RankAgreement``)."""
    statistics = {
        f"{name}.{buffer}"
        for name, child in module.named_modules()
        if isinstance(child, nn.modules.batchnorm._BatchNorm)
        for buffer, _ in child.named_buffers(recurse=False)
    }
    state = [(name, tensor.detach()) for name, tensor in module.state_dict().items() if name not in statistics]
    device = next((tensor.device for _, tensor in state), torch.device("cpu"))
    names = {id(parameter): name for name, parameter in module.named_parameters()}
    for index, optimizer in enumerate(optimizers):
        for parameter, entries in optimizer.state.items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    value = value.detach()
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = torch.tensor(float(value), dtype=torch.float64)
                else:
                    continue
                state.append((f"optimizer{index}.{names.get(id(parameter), '?')}.{key}", value.to(device)))
    return state


class SharedRunDirectory(pl.Callback):
    """Stops a DDP job, before it loads or trains anything, when its processes got different run directories.

    Processes that a launcher starts (srun, torchrun) compose the config each on its own, so each
    resolves a timestamped default ``hydra.run.dir`` to a directory of its own: rank 0 would resume
    and write there while the others look elsewhere (and would not resume at all).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = str(Path(run_dir).resolve())

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size == 1:
            return
        directories: list[str | None] = [None] * trainer.world_size
        dist.all_gather_object(directories, self.run_dir)
        if len(set(directories)) > 1:
            raise ConfigError(
                "hydra.run.dir",
                f"the {trainer.world_size} processes of this DDP job have different run directories "
                f"({', '.join(sorted(set(directories)))}); a launcher that starts them (srun, torchrun) needs one "
                "directory given to all: hydra.run.dir=<path>",
            )


class DistinctRankStreams(pl.Callback):
    """Gives every DDP rank but rank 0 a random stream of its own when the fit starts.

    Every process seeds itself with the run's seed, so without this the ranks would draw the same
    dropout masks (and any other per-sample noise) for their different samples: the samples at the
    same position of each rank's share would be perturbed alike. Rank ``r``'s stream is hashed from
    the run's seed and ``r``. What must be equal on every rank is drawn before the fit (the model,
    broadcast by DDP anyway) or from its own keyed stream (the gates' noise, the data order).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size == 1 or trainer.global_rank == 0:
            return
        state = np.random.SeedSequence([torch.initial_seed(), trainer.global_rank]).generate_state(2, np.uint32)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
        np.random.seed(int(state[0]))
        random.seed(int(state[1]))


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
        if not all(bool(torch.isfinite(p).all()) for p in trainer.lightning_module.parameters()):
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


@dataclass
class _LossCheck:
    """One step's loss as the host will read it: ``values`` = (ranks whose loss is not finite, mean loss)."""

    step: int
    epoch: int
    values: torch.Tensor
    ready: torch.cuda.Event | None


class DivergenceGuard(pl.Callback):
    """Stops the run at the first non-finite training loss, naming its step.

    On the CPU the loss is read at its own step, before its backward pass: the weights are still
    those of the last finite step. On a GPU reading it there would stall the host at every step
    until the forward pass is done, so each step's flag is copied to the host without waiting and
    read ``lag`` steps later (``GPU_LAG``), when the device has long finished it: the run stops at
    most that many steps late, still naming the step whose loss was not finite. Either way no
    checkpoint is written after the last finite step (``RunCheckpoint`` saves finite weights only),
    so ``last.ckpt`` stays the last good state. Under DDP the flag is summed over the ranks (on the
    device) and every rank reads the same step's sum, so all of them stop at the same step.
    """

    GPU_LAG = 2

    def __init__(self, lag: int | None = None) -> None:
        self.lag = lag  # None: 0 on the CPU, GPU_LAG on a GPU
        self._pending: deque[_LossCheck] = deque()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        detached = loss.detach().float()
        not_finite = (~torch.isfinite(detached)).any().float().reshape(1)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(not_finite)
        values = torch.cat([not_finite, detached.mean().reshape(1)])
        ready = None
        if values.is_cuda:
            host = torch.empty(2, pin_memory=True)
            host.copy_(values, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
            values = host
        self._pending.append(_LossCheck(trainer.global_step, trainer.current_epoch, values, ready))
        lag = self.lag if self.lag is not None else (self.GPU_LAG if ready is not None else 0)
        while len(self._pending) > lag:
            self._check(self._pending.popleft(), trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        while self._pending:
            self._check(self._pending.popleft(), trainer)

    def _check(self, check: _LossCheck, trainer: pl.Trainer) -> None:
        if check.ready is not None:
            check.ready.synchronize()
        not_finite, value = check.values.tolist()
        if not not_finite:
            return
        where = f"{value}" if not math.isfinite(value) else "non-finite on another rank"
        learning_rates = sorted({group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups})
        raise TrainingDiverged(
            f"the training loss became {where} at step {check.step} (epoch {check.epoch}); the "
            f"learning rate is the likely cause (now {', '.join(f'{lr:g}' for lr in learning_rates)}): lower "
            "method.optimizer.lr and start a new run dir. No checkpoint was written after the last finite step"
        )
