"""A tiny comparison sweep as a user runs it: ``train.py -m experiment=compare_mnist_mlp`` in a
subprocess, on the embedded digits, one short epoch per job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = (
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "evaluation.latency.min_run_time=0.02",
    "evaluation.latency.rounds=1",
)


def run_tiny_sweep(cwd: Path, sweep: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run the sweep into ``sweep`` with ``overrides`` and assert that it succeeded."""
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "experiment=compare_mnist_mlp", "dataset=digits",
         *overrides, *QUICK, f"hydra.sweep.dir={sweep}"],
        check=False, cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done
