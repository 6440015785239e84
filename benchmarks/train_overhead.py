"""Epoch time of the platform (consparse.train.run, i.e. train.py) against a bare PyTorch loop.

Both train the same model with the same optimiser, batch, data loader and validation pass, in this
one process, alternately, so that machine load affects both alike. Prints seconds per epoch and the
ratio platform / bare (goal: <= 1.15).

    python benchmarks/train_overhead.py --dataset mnist --root ../shared/data --epochs 2 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from consparse.config import instantiate_node
from consparse.models import build_model
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
        "evaluation.compression_grid={}",
        "evaluation.export=false",
        "evaluation.latency.min_run_time=0.01",
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


def bare_epoch_seconds(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(args, Path(tmp) / "run")
    torch.manual_seed(cfg.seed)
    datamodule = instantiate_node(cfg.dataset)
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule.info)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.method.optimizer.lr, momentum=cfg.method.optimizer.momentum)
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--root", default=None, help="dataset.root (e.g. ../shared/data)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    platform, bare = [], []
    for _ in range(args.repeats):
        bare.append(bare_epoch_seconds(args))
        platform.append(platform_epoch_seconds(args))
    p, b = statistics.median(platform), statistics.median(bare)
    print(f"model={args.model} dataset={args.dataset} batch={args.batch_size} epochs={args.epochs} "
          f"repeats={args.repeats} threads={args.threads}")
    print(f"bare PyTorch loop : {b:.3f} s/epoch  (runs: {', '.join(f'{x:.3f}' for x in bare)})")
    print(f"consparse train.py: {p:.3f} s/epoch  (runs: {', '.join(f'{x:.3f}' for x in platform)})")
    print(f"ratio platform/bare: {p / b:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()
