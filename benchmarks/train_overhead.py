"""Epoch time of the platform (consparse.train.run, i.e. train.py) against a bare PyTorch loop.

All variants train the same model (same seed) with the same optimiser (built from the same config
node), batch, data loaders and validation pass, in this one process, alternately, so that machine
load affects them alike:

* bare: a plain PyTorch loop, timed around its epochs;
* lightning: the same loop as a minimal LightningModule in a Trainer without loggers, checkpoints,
  metrics or progress bar: what Lightning itself costs;
* platform: ``consparse.train.run`` with method=dense; its epoch time is ``train_seconds`` (the
  Trainer's fit, with per-epoch checkpoints, metrics and the CSV log) over its epochs.

Prints seconds per epoch (medians over repeats) and the ratios to bare (goal: platform <= 1.15).

    python benchmarks/train_overhead.py --dataset mnist --root ../shared/data --epochs 2 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from consparse.config import instantiate_node
from consparse.models import build_model
from consparse.quiet import silence_known_noise
from consparse.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"


def make_config(args: argparse.Namespace, output_dir: Path):
    overrides = [
        "method=dense",
        f"model={args.model}",
        f"dataset={args.dataset}",
        f"dataset.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "evaluation.compression_grid=null",
        "evaluation.export=false",
        "evaluation.latency.min_run_time=0.01",
        "evaluation.latency.rounds=1",
        "scheduler@method.scheduler=constant",
        f"paths.output_dir={output_dir}",
    ]
    if args.root:
        overrides.append(f"dataset.root={args.root}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def platform_epoch_seconds(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(args, Path(tmp) / "run")
        results = run(cfg)
    return results["train_seconds"] / results["epochs"]


def _prepared(args: argparse.Namespace) -> tuple[Any, nn.Module, torch.optim.Optimizer, Any, Any]:
    """The platform's config, model, optimiser and loaders, built the way ``run`` builds them."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(args, Path(tmp) / "run")
    torch.manual_seed(cfg.seed)
    datamodule = instantiate_node(cfg.dataset)
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule.info)
    optimizer = hydra.utils.instantiate(cfg.method.optimizer)(model.parameters())
    return cfg, model, optimizer, datamodule.train_dataloader(), datamodule.val_dataloader()


def bare_epoch_seconds(args: argparse.Namespace) -> float:
    _, model, optimizer, train_loader, val_loader = _prepared(args)
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
    return (time.perf_counter() - start) / args.epochs


class _Minimal(pl.LightningModule):
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.model = model
        self.optimizer = optimizer

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        (self.model(x).argmax(1) == y).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer


class _FitTimer(pl.Callback):
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.started


def lightning_epoch_seconds(args: argparse.Namespace) -> float:
    _, model, optimizer, train_loader, val_loader = _prepared(args)
    timer = _FitTimer()
    trainer = pl.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer],
    )
    trainer.fit(_Minimal(model, optimizer), train_dataloaders=train_loader, val_dataloaders=val_loader)
    return timer.seconds / args.epochs


VARIANTS: dict[str, Callable[[argparse.Namespace], float]] = {
    "bare PyTorch loop": bare_epoch_seconds,
    "minimal Lightning": lightning_epoch_seconds,
    "consparse train.py": platform_epoch_seconds,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--root", default=None, help="dataset.root (e.g. ../shared/data)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    silence_known_noise()
    torch.set_num_threads(args.threads)

    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, variant in VARIANTS.items():
            seconds[name].append(variant(args))
    medians = {name: statistics.median(runs) for name, runs in seconds.items()}
    bare = medians["bare PyTorch loop"]
    print(f"model={args.model} dataset={args.dataset} batch={args.batch_size} epochs={args.epochs} "
          f"repeats={args.repeats} threads={args.threads}")
    for name, runs in seconds.items():
        print(f"{name:19s}: {medians[name]:.3f} s/epoch  ratio {medians[name] / bare:.3f}  "
              f"(runs: {', '.join(f'{x:.3f}' for x in runs)})")
    print(f"ratio platform/bare: {medians['consparse train.py'] / bare:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()
