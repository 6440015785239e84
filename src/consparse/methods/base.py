"""The LightningModule every method derives from: metrics, optimiser wiring and the finalize seam.

A method owns how it optimises (automatic or manual), its constraint or projection step and its
sparsity bookkeeping. It does not measure or write results: ``finalize`` returns a ``Deployment``
and ``consparse.train`` measures its model against its reference with the shared ``compress`` code.
A method that trains one kind of model only names it in ``requires_model`` (checked when the method
is built, ``consparse.methods.registry``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from consparse.compress.prune import prune_to_density
from consparse.data.info import DatasetInfo
from consparse.errors import ConfigPlace, ParameterError, config_key, parameter_prefix
from consparse.nm_pattern import NMPattern
from consparse.validation import check_choice, check_density, check_range

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

STAGES = ("train", "val", "test")
# Scheduler arguments that mean "the length of the run"; null in the config means "fill it in".
_RUN_LENGTH_ARGS = ("T_max", "total_steps", "total_iters")


def _totals_name(stage: str) -> str:
    # Prefixed: a buffer named "train" would clash with nn.Module.train.
    return f"{stage}_totals"


@dataclass(frozen=True)
class Deployment:
    """What a method hands over after training, for ``consparse.train`` to measure.

    Attributes:
        model: the deployed model, measured and exported.
        reference: the dense reference that density, params, MACs and latency are compared against.
        compression_base: the trained model that the compression curve prunes without retraining
            (None: no curve).
        metrics: the method's figures for ``results.json`` (``method_metrics``). A callable, called
            once the model is measured: some figures count work the measurement itself does (an
            implicit model's forward solves during the test evaluation and the latency runs).
        nm_pattern: the N:M pattern the deployed model follows (None: none), whose masks are
            exported and, on a GPU, timed as semi-structured sparse.
    """

    model: nn.Module
    reference: nn.Module
    compression_base: nn.Module | None
    metrics: Callable[[], dict[str, Any]]
    nm_pattern: NMPattern | None = None


class SparseMethod(pl.LightningModule):
    """Shared training loop for classification with a sparsity goal.

    Args:
        model: the network to train (a plain ``nn.Module`` from ``consparse.models``).
        info: the dataset's description (input shape and classes).
        target_density: fraction of sparsifiable weights the deployed model may keep, or None.
        optimizer: factory ``params -> Optimizer`` (a Hydra ``_partial_`` node).
        scheduler: factory ``optimizer -> LRScheduler`` or None. ``T_max`` / ``total_steps`` /
            ``total_iters`` left null are set to the run length in epochs or steps.
        scheduler_interval: ``epoch`` or ``step``.
        label_smoothing: cross-entropy label smoothing in [0, 1).
    """

    #: The N:M pattern of the deployed model where a method prunes to one (``consparse.nm_pattern``):
    #: the run then exports its masks and, on a GPU, times it as semi-structured sparse.
    nm_pattern: NMPattern | None = None
    # The ``model`` config this method trains (a key of ``consparse.models.registry.ARCHITECTURES``);
    # None: any model.
    requires_model: str | None = None
    # Where the config boundary built this method (set by ``instantiate_node``; None when built in
    # code): hooks Lightning calls later (``configure_optimizers``) report a ParameterError there.
    config_place: ConfigPlace | None = None

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        target_density: float | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        check_density("target_density", target_density)
        check_choice("scheduler_interval", scheduler_interval, ["epoch", "step"])
        check_range("label_smoothing", label_smoothing, 0.0, 1.0, high_inclusive=False)
        if optimizer is not None and not callable(optimizer):
            raise ParameterError("optimizer", "must be a node with _target_ and _partial_: true")
        self.model = model
        self.info = info
        self.target_density = target_density
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        # Per stage, running totals of the sample-weighted loss, the correct predictions and the
        # samples, logged once per epoch (a self.log call per step costs more than the forward pass
        # of a small model). Three sums instead of torchmetrics' MeanMetric + MulticlassAccuracy, whose
        # per-step cost benchmarks/train_overhead.py compares; the totals are summed over DDP ranks once per epoch.
        for stage in STAGES:
            self.register_buffer(_totals_name(stage), torch.zeros(3), persistent=False)
        # DDP broadcasts rank 0's buffers at every training forward: each rank's totals must stay its own.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, [_totals_name(s) for s in STAGES])
        self._epoch_values: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ the method seam
    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        """What training deploys. Default: the trained model, magnitude-pruned to ``target_density`` if set."""
        model = self.model.eval()
        if self.target_density is None:
            return self.deployment(model)
        return self.deployment(prune_to_density(model, self.target_density, scope="global"))

    def deployment(self, model: nn.Module) -> Deployment:
        """``model`` deployed with the defaults: the trained model as dense reference and compression base."""
        return Deployment(model, reference=self.model, compression_base=self.model, metrics=self.method_metrics,
                          nm_pattern=self.nm_pattern)

    def method_metrics(self) -> dict[str, Any]:
        """Method-specific figures for ``results.json`` (``method_metrics``), read after the measurement."""
        return {}

    # ------------------------------------------------------------------ training loop
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The data term; methods add their regularisers or constraints around it."""
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self.log_step("train", loss, logits, y)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log_step("val", self.loss(logits, y), logits, y)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log_step("test", self.loss(logits, y), logits, y)

    def log_step(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Accumulate this batch's loss and accuracy into the epoch's ``<stage>/loss`` and ``<stage>/acc``."""
        totals = self._totals(stage)
        samples = targets.numel()
        totals[0] += loss.detach() * samples
        totals[1] += (logits.detach().argmax(dim=1) == targets).sum()
        totals[2] += samples
        self._epoch_values.pop(stage, None)

    def _totals(self, stage: str) -> torch.Tensor:
        return getattr(self, _totals_name(stage))

    def epoch_metric_values(self, stage: str) -> dict[str, torch.Tensor]:
        """The epoch's ``<stage>/loss`` and ``<stage>/acc`` so far, over all DDP ranks (empty before any batch).

        Under DDP this is a collective: every rank calls it, once per epoch and stage (the result is
        kept until the next batch).
        """
        if stage not in self._epoch_values:
            totals = self._totals(stage)
            if self._trainer is not None and self.trainer.world_size > 1:
                totals = self.trainer.strategy.reduce(totals.clone(), reduce_op="sum")
            loss_sum, correct, samples = totals
            self._epoch_values[stage] = (
                {f"{stage}/loss": loss_sum / samples, f"{stage}/acc": correct / samples} if samples > 0 else {}
            )
        return self._epoch_values[stage]

    def _log_epoch(self, stage: str) -> None:
        values = self.epoch_metric_values(stage)
        if values:
            # Already summed over ranks; sync_dist averages equal values, as Lightning asks of epoch logs.
            self.log_dict(values, prog_bar=stage != "train", sync_dist=True)
        self._totals(stage).zero_()
        self._epoch_values.pop(stage, None)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]] | Iterable[torch.nn.Parameter]:
        """What the optimiser receives; methods with several learning rates return groups."""
        return self.model.parameters()

    def configure_optimizers(self) -> Any:
        with config_key(self.config_place):
            if self.optimizer_factory is None:
                raise ParameterError("optimizer", "this method needs an optimizer node")
            groups = self.parameter_groups()
            with parameter_prefix("optimizer"):
                optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self._build_scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        factory = self.scheduler_factory
        if isinstance(factory, functools.partial):
            length = self._run_length()
            missing = {k: length for k in _RUN_LENGTH_ARGS if k in factory.keywords and factory.keywords[k] is None}
            if missing:
                factory = functools.partial(factory.func, *factory.args, **{**factory.keywords, **missing})
        return factory(optimizer)

    def _run_length(self) -> int:
        if self.scheduler_interval == "step":
            return max(1, int(self.trainer.estimated_stepping_batches))
        return max(1, int(self.trainer.max_epochs or 1))
