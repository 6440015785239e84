"""Shared fixtures: composing the Hydra config in-process, and locating the offline datasets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
# CI clones main with ../shared beside it; CONSPARSE_SHARED_DATA points elsewhere if needed.
SHARED_DATA = Path(os.environ.get("CONSPARSE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Tests run on the CPU with one thread per process: faster on a 2-core machine, and repeatable.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")

# Overrides that make any composed job tiny: one epoch, few batches, a short latency measurement.
FAST_OVERRIDES = (
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "evaluation.latency.min_run_time=0.02",
    "evaluation.latency.rounds=1",
)


def compose_config(overrides: list[str] | tuple[str, ...] = (), output_dir: Path | None = None) -> DictConfig:
    """The config ``python train.py <overrides>`` would run, with ``paths.output_dir`` pinned."""
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*extra, *overrides])


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_config("method=dense", ...)``: a fast config writing into this test's tmp dir."""

    def make(*overrides: str, fast: bool = True, output_dir: Path | None = None) -> DictConfig:
        chosen = [*(FAST_OVERRIDES if fast else ()), *overrides]
        return compose_config(chosen, output_dir or tmp_path / "run")

    return make


@pytest.fixture
def shared_data() -> Path:
    """The offline datasets; the test skips where they are absent (a user's machine)."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"offline datasets not found at {SHARED_DATA} (set CONSPARSE_SHARED_DATA to run this test)")
    return SHARED_DATA
