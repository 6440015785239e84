"""Validation accuracy of finished runs' deployed (exported) models: choosing settings without the test set.

A run logs ``val/acc`` of the model it trains; what a comparison reports is the deployed model's
test accuracy, and for methods that prune at the end without retraining (sfw, dense's curve) the
two differ. This script rebuilds each run's export (``consparse.compress.export.load_exported``,
no pickle), the run's own data module and split (its recorded config), and measures accuracy on
the validation split. The result is also written to ``<run dir>/deployed_val_accuracy.txt``.

    python benchmarks/deployed_val_accuracy.py outputs/runs/a outputs/runs/b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from consparse.compress.export import load_exported
from consparse.config import instantiate_node
from consparse.evaluate_run import run_config

RESULT_FILE = "deployed_val_accuracy.txt"


@torch.no_grad()
def deployed_val_accuracy(run_dir: Path) -> float:
    """Accuracy in [0, 1] of ``run_dir``'s exported model on the run's validation split."""
    cfg = run_config(run_dir, [])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate_node(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = load_exported(run_dir / "export")
    correct = total = 0
    for inputs, targets in datamodule.val_dataloader():
        correct += int((model(inputs).argmax(-1) == targets).sum())
        total += len(targets)
    return correct / total


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with evaluation.export=true)")
    for run_dir in parser.parse_args(arguments).runs:
        accuracy = deployed_val_accuracy(run_dir)
        (run_dir / RESULT_FILE).write_text(f"{accuracy:.6f}\n")
        print(f"{run_dir}\t{100 * accuracy:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
