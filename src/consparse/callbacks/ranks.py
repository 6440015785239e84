"""DDP checks: every rank ends the fit in the same state, the ranks share one run directory, and
each draws its own per-sample noise."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from consparse.errors import ConfigError

log = logging.getLogger(__name__)


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
