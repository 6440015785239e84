"""The LightningModule every method derives from: metrics, optimiser wiring and the finalize seam.

A method owns how it optimises (automatic or manual), its constraint or projection step and its
sparsity bookkeeping. It does not measure or write results: ``consparse.train`` measures the model
returned by ``finalize`` against ``reference_model`` with the shared ``compress`` code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from consparse.compress.count import sparsifiable_weights
from consparse.data.info import DatasetInfo
from consparse.compress.prune import prune_to_density
from consparse.errors import ConfigError
from consparse.validation import check_choice, check_density, check_range

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

STAGES = ("train", "val", "test")
# Scheduler arguments that mean "the length of the run"; null in the config means "fill it in".
_RUN_LENGTH_ARGS = ("T_max", "total_steps", "total_iters")


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
        check_density("method.target_density", target_density)
        check_choice("method.scheduler_interval", scheduler_interval, ["epoch", "step"])
        check_range("method.label_smoothing", label_smoothing, 0.0, 1.0, high_inclusive=False)
        if optimizer is not None and not callable(optimizer):
            raise ConfigError("method.optimizer", "must be a node with _target_ and _partial_: true")
        self.model = model
        self.info = info
        num_classes = info.num_classes
        self.target_density = target_density
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing
        # Accumulated per step, logged once per epoch: a self.log call per step costs more than the
        # forward pass of a small model (measured: benchmarks/train_overhead.py).
        # Keys are prefixed: a ModuleDict key "train" would clash with nn.Module.train.
        self.epoch_metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": nn.ModuleDict(
                    {
                        "loss": MeanMetric(),
                        "acc": MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False),
                    }
                )
                for stage in STAGES
            }
        )

    # ------------------------------------------------------------------ the method seam
    def sparsifiable(self) -> dict[str, torch.Tensor]:
        """The weights this method sparsifies (default: Linear and Conv weights of the model)."""
        return sparsifiable_weights(self.model)

    def reference_model(self) -> nn.Module:
        """The dense reference that density, params, MACs and latency are compared against."""
        return self.model

    def finalize(self, datamodule: pl.LightningDataModule) -> nn.Module:
        """The deployed model. Default: the trained model, magnitude-pruned to ``target_density`` if set."""
        model = self.model.eval()
        if self.target_density is None:
            return model
        return prune_to_density(model, self.target_density, scope="global")

    def compression_base(self) -> nn.Module | None:
        """The trained model that the compression curve prunes without retraining (None: no curve)."""
        return self.model

    def method_metrics(self) -> dict[str, Any]:
        """Method-specific figures for ``results.json`` (``method_metrics``)."""
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
        metrics = self._stage_metrics(stage)
        metrics["loss"].update(loss.detach(), weight=targets.numel())
        metrics["acc"].update(logits.detach(), targets)

    def _stage_metrics(self, stage: str) -> nn.ModuleDict:
        return self.epoch_metrics[f"{stage}_metrics"]

    def epoch_metric_values(self, stage: str) -> dict[str, torch.Tensor]:
        """The epoch's metrics so far (synchronised over DDP ranks by torchmetrics)."""
        return {
            f"{stage}/{name}": metric.compute()
            for name, metric in self._stage_metrics(stage).items()
            if metric.update_count > 0
        }

    def _log_epoch(self, stage: str) -> None:
        values = self.epoch_metric_values(stage)
        if values:
            self.log_dict(values, prog_bar=stage != "train")
        for metric in self._stage_metrics(stage).values():
            metric.reset()

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
        if self.optimizer_factory is None:
            raise ConfigError("method.optimizer", "this method needs an optimizer node")
        optimizer = self.optimizer_factory(self.parameter_groups())
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
