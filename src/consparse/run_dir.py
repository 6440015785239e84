"""Guarding the run directory: one run per directory, resume from ``last.ckpt``, no lost results.

Rerunning in an existing run directory (``hydra.run.dir=<dir>``, or a requeued SLURM job) continues
from its last checkpoint, provided the directory holds the same experiment (method, model,
dataset, seed). A previous ``results.json`` is kept under a new name before a new one is written.
A directory whose run failed before its first checkpoint (a config error, missing data) holds
nothing to continue, so any run may take it; the failure record is kept like any other results.

The check runs twice: in ``RunDirGuard`` (a Hydra callback) before Hydra writes its own record
(``.hydra/``, the job log) into the directory, and in ``consparse.train.run`` for callers that
bypass Hydra's entry point (tests, benchmarks, sweeps whose job directories already exist).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from consparse.errors import ConfigError, ConsparseError, RunDirError
from consparse.report.results import RESULTS_FILE, read_results
from consparse.run_config import check_run_config

IDENTITY_FILE = "run_identity.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# What makes two invocations the same experiment; epochs, hardware and loggers may change on resume.
IDENTITY_KEYS = ("method", "model", "dataset", "seed")


def run_identity(cfg: DictConfig) -> dict:
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
            for key in IDENTITY_KEYS}


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def process_rank() -> int:
    """Rank of this process before a Trainer exists (Lightning and SLURM set these variables)."""
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if variable in os.environ:
            return int(os.environ[variable])
    return 0


def check_run_dir(run_dir: Path, cfg: DictConfig, resume: bool) -> Path | None:
    """Raise RunDirError, writing nothing, unless ``run_dir`` may take this run.

    It may not when it holds a checkpoint or results of a different experiment or of an unknown run
    (no identity file), or when ``resume`` is requested and there is nothing to resume. Returns the
    checkpoint to resume from, if any.
    """
    identity = run_identity(cfg)
    identity_file = run_dir / IDENTITY_FILE
    checkpoint = last_checkpoint(run_dir)
    if holds_a_run(run_dir):
        if not identity_file.exists():
            raise RunDirError(
                f"run directory {run_dir} holds results or checkpoints of an unknown run ({IDENTITY_FILE} is missing); "
                "choose a new hydra.run.dir"
            )
        previous = OmegaConf.to_container(OmegaConf.load(identity_file), resolve=True)
        if previous != identity:
            differing = [key for key in IDENTITY_KEYS if previous.get(key) != identity[key]]
            raise RunDirError(
                f"run directory {run_dir} holds another experiment (it differs in: {', '.join(differing)}); "
                "choose a new hydra.run.dir, or rerun there with the same method, model, dataset and seed"
            )
    if resume and not checkpoint.exists():
        raise RunDirError(
            f"resume=true but there is no checkpoint at {checkpoint}; point hydra.run.dir at the directory of "
            "the run to continue (it holds checkpoints/last.ckpt)"
        )
    return checkpoint if checkpoint.exists() else None


def holds_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint or results other than a failure record."""
    if last_checkpoint(run_dir).exists():
        return True
    results = run_dir / RESULTS_FILE
    if not results.exists():
        return False
    try:
        return read_results(results).get("status") != "failed"
    except (OSError, ValueError):
        return True  # unreadable: keep it


def make_run_dir(run_dir: Path, field: str = "hydra.run.dir") -> None:
    """Create ``run_dir`` (and its parents) or raise ConfigError naming ``field`` and the reason."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            field, f"cannot create the run directory {run_dir} ({error.strerror}); choose a directory you can write"
        ) from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(field, f"the run directory {run_dir} is not writable; choose a directory you can write")


def claim_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Mark ``run_dir`` as this experiment's (after ``check_run_dir``) and archive an earlier results.json."""
    make_run_dir(run_dir, "paths.output_dir")
    OmegaConf.save(OmegaConf.create(run_identity(cfg)), run_dir / IDENTITY_FILE)
    archive_previous_results(run_dir)


def archive_previous_results(run_dir: Path) -> Path | None:
    """Rename an existing results.json to results.previous-<n>.json so it is never overwritten."""
    current = run_dir / RESULTS_FILE
    if not current.exists():
        return None
    n = 1
    while (run_dir / f"results.previous-{n}.json").exists():
        n += 1
    target = run_dir / f"results.previous-{n}.json"
    current.rename(target)
    return target


class RunDirGuard(Callback):
    """Refuse a bad run-level value (``consparse.run_config``), a run directory of another experiment or
    one that cannot be created, before Hydra writes ``.hydra/`` and the log into it.

    Registered in ``conf/config.yaml`` (``hydra.callbacks.run_dir_guard``); Hydra calls
    ``on_run_start`` after composing the config and before creating the job's directory. Only
    single runs pass through here: a multirun's job directories are checked by ``consparse.train``.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() != 0:
            return  # DDP processes started for a run share the directory rank 0 checked
        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        try:
            check_run_config(config)
            check_run_dir(run_dir, config, resume=config.get("resume") is True)
            make_run_dir(run_dir)
        except ConsparseError as error:
            print(f"consparse: error: {error}", file=sys.stderr)
            sys.exit(2)
