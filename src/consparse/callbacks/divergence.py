"""Stopping a run at its first non-finite training loss."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from consparse.errors import TrainingDiverged


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


def non_finite_tensors(module: nn.Module) -> list[str]:
    """Names of ``module``'s floating-point parameters and buffers that hold a NaN or inf (one host read)."""
    named = [(name, tensor) for name, tensor in [*module.named_parameters(), *module.named_buffers()]
             if tensor.is_floating_point()]
    if not named:
        return []
    flags = [torch.isfinite(tensor).all() for _, tensor in named]
    finite = torch.stack([flag.to(flags[0].device) for flag in flags]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]

