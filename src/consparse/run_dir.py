"""Guarding the run directory: one run per directory, resume from ``last.ckpt``, no lost results.

Rerunning in an existing run directory (``hydra.run.dir=<dir>``, or a requeued SLURM job) continues
from its last checkpoint, provided the directory holds the same experiment (method, model,
dataset, seed). A previous ``results.json`` is kept under a new name before a new one is written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from consparse.errors import RunDirError
from consparse.report.results import RESULTS_FILE

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


def prepare_run_dir(run_dir: Path, cfg: DictConfig, resume: bool) -> Path | None:
    """Check that ``run_dir`` may be used by this run; return the checkpoint to resume from, if any.

    Raises RunDirError (and writes nothing) when the directory holds a different experiment, or when
    ``resume`` is requested and there is nothing to resume.
    """
    identity = run_identity(cfg)
    identity_file = run_dir / IDENTITY_FILE
    checkpoint = last_checkpoint(run_dir)
    if identity_file.exists():
        previous = OmegaConf.to_container(OmegaConf.load(identity_file), resolve=True)
        if previous != identity:
            differing = [key for key in IDENTITY_KEYS if previous.get(key) != identity[key]]
            raise RunDirError(
                f"run directory {run_dir} holds another experiment (it differs in: {', '.join(differing)}); "
                "choose a new hydra.run.dir, or rerun there with the same method, model, dataset and seed"
            )
    elif (run_dir / RESULTS_FILE).exists() or checkpoint.exists():
        raise RunDirError(
            f"run directory {run_dir} holds results or checkpoints of an unknown run ({IDENTITY_FILE} is missing); "
            "choose a new hydra.run.dir"
        )
    if resume and not checkpoint.exists():
        raise RunDirError(
            f"resume=true but there is no checkpoint at {checkpoint}; point hydra.run.dir at the directory of "
            "the run to continue (it holds checkpoints/last.ckpt)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(identity), identity_file)
    archive_previous_results(run_dir)
    return checkpoint if checkpoint.exists() else None


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
