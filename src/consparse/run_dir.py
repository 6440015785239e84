"""Guarding the run directory: one run per directory, resume from ``last.ckpt``, no lost results.

Rerunning in an existing run directory (``hydra.run.dir=<dir>``, or a requeued SLURM job) continues
from its last checkpoint, provided the directory holds the same experiment (method, model,
dataset, seed). A previous ``results.json`` is kept under a new name before a new one is written.
A directory whose run failed before its first checkpoint (a config error, missing data) holds
nothing to continue, so any run may take it; the failure record is kept like any other results.

The check runs twice: in ``RunDirGuard`` (a Hydra callback) before Hydra writes its own record
(``.hydra/``, the job log) into the directory, and in ``consparse.train.run`` for callers that
bypass Hydra's entry point (tests, benchmarks, sweeps whose job directories already exist).

One process at a time: a run holds an exclusive ``flock`` on ``run.lock`` (which names its pid and
host) while it runs, so a second run started in the same directory is refused. The kernel drops the
lock when the process ends, however it ends (``kill -9`` included), so a lock is never stale.

A multirun's sweep directory gets the same guards: ``sweep_identity.yaml`` records what the sweep
runs (the identity of its base config, the overrides and sweeper settings that choose method,
model, dataset and seed), and a multirun pointed at a sweep directory of another sweep, or of a
sweep still running (its lock), is refused before Hydra writes into any job directory.

Checkpoints: ``checkpoints/last.ckpt`` and the one before it, ``checkpoints/previous.ckpt``. A
checkpoint that is truncated or corrupt is named in the error, with the previous one offered.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sys
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from consparse.errors import ConfigError, ConsparseError, RunDirError
from consparse.report.results import RESULTS_FILE, read_results
from consparse.run_config import check_run_config

IDENTITY_FILE = "run_identity.yaml"
SWEEP_IDENTITY_FILE = "sweep_identity.yaml"
LOCK_FILE = "run.lock"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "previous.ckpt"
# What makes two invocations the same experiment; epochs, hardware and loggers may change on resume.
IDENTITY_KEYS = ("method", "model", "dataset", "seed")


def run_identity(cfg: DictConfig) -> dict:
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
            for key in IDENTITY_KEYS}


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def previous_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / PREVIOUS_CHECKPOINT


def rotate_checkpoints(directory: Path, new: Path) -> None:
    """Make ``new`` the ``last.ckpt`` of ``directory``, the current one becoming ``previous.ckpt``.

    Only renames and a hard link, so at every moment ``last.ckpt`` is a whole checkpoint.
    """
    last, previous = directory / LAST_CHECKPOINT, directory / PREVIOUS_CHECKPOINT
    if last.exists():
        staged = directory / f".{PREVIOUS_CHECKPOINT}.partial"
        staged.unlink(missing_ok=True)
        try:
            os.link(last, staged)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(last, staged)
        os.replace(staged, previous)
    os.replace(new, last)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a whole checkpoint (None when it can), read without unpickling anything.

    ``torch.save`` writes a zip archive with a CRC per member: a truncated file has no central
    directory and a damaged one fails its CRC.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"it is truncated or not a checkpoint ({error})"
    if damaged is not None:
        return f"its member {damaged} is corrupt"
    return None


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
    if not checkpoint.exists():
        return None
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        previous = previous_checkpoint(run_dir)
        if previous.exists() and checkpoint_problem(previous) is None:
            offer = (f"the checkpoint before it is whole: continue from it with `mv {checkpoint} {checkpoint}.corrupt "
                     f"&& cp {previous} {checkpoint}` and rerun")
        else:
            offer = "no earlier whole checkpoint is kept: start again in a new hydra.run.dir"
        raise RunDirError(f"cannot resume from {checkpoint}: {problem}; {offer}")
    return checkpoint


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


def lock_run_dir(run_dir: Path) -> bool:
    """Hold ``run_dir/run.lock`` for this process; False when this process holds it already.

    Raises RunDirError naming the owner's pid and host when another process holds it.
    """
    run_dir = Path(os.path.abspath(run_dir))
    if run_dir in _HELD_LOCKS:
        return False
    path = run_dir / LOCK_FILE
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirError(
                f"cannot create {path} ({error.strerror or error}); choose a writable hydra.run.dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(
                f"run directory {run_dir} is in use by {owner} ({path}); wait for that run to end, or choose another "
                "hydra.run.dir"
            ) from None
        # The owner may have removed the file between our open and our lock: then lock the new one.
        if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}"
                 f"{_slurm_job()}\n".encode())
    _HELD_LOCKS[run_dir] = fd
    return True


def unlock_run_dir(run_dir: Path) -> None:
    """Release the lock ``lock_run_dir`` took (the file goes while it is still held, so no one locks a stale file)."""
    fd = _HELD_LOCKS.pop(Path(os.path.abspath(run_dir)), None)
    if fd is None:
        return
    Path(os.path.abspath(run_dir), LOCK_FILE).unlink(missing_ok=True)
    os.close(fd)


# run dir -> file descriptor of its held lock; the kernel releases them when the process ends.
_HELD_LOCKS: dict[Path, int] = {}


def _slurm_job() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f" (SLURM job {job})" if job else ""


def claim_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Mark ``run_dir`` as this experiment's (after ``check_run_dir``) and archive an earlier results.json."""
    make_run_dir(run_dir, "paths.output_dir")
    OmegaConf.save(OmegaConf.create(run_identity(cfg)), run_dir / IDENTITY_FILE)
    archive_previous_results(run_dir)


def archive_previous_results(run_dir: Path) -> Path | None:
    """Rename an existing results.json to results.previous-<n>.json so it is never overwritten."""
    return archive_previous(run_dir / RESULTS_FILE)


def archive_previous(path: Path) -> Path | None:
    """Rename an existing ``<stem><suffix>`` to the first free ``<stem>.previous-<n><suffix>``; its new path."""
    if not path.exists():
        return None
    n = 1
    while (target := path.with_name(f"{path.stem}.previous-{n}{path.suffix}")).exists():
        n += 1
    path.rename(target)
    return target


def sweep_identity(config: DictConfig) -> dict:
    """What a multirun runs, as far as it decides the experiments of its jobs (see the module docstring)."""
    parsed = OverridesParser.create().parse_overrides([str(o) for o in config.hydra.overrides.task])
    chosen = sorted(o.input_line for o in parsed if _names_identity(o.key_or_group))
    sweeper = config.hydra.get("sweeper") or {}
    return {
        "identity": run_identity(config),
        "overrides": chosen,
        "sweeper": {key: OmegaConf.to_container(sweeper[key], resolve=True) for key in ("params", "blocks")
                    if sweeper.get(key) is not None},
    }


def _names_identity(key: str) -> bool:
    head = key.replace("/", ".").replace("@", ".").split(".", 1)[0]
    return head in (*IDENTITY_KEYS, "experiment")


def check_sweep_dir(sweep_dir: Path, config: DictConfig) -> None:
    """Raise RunDirError, writing nothing, when ``sweep_dir`` holds runs of another sweep (or of an unknown one)."""
    if not sweep_dir.is_dir():
        return
    job_dirs = {path.parent for path in sweep_dir.rglob(RESULTS_FILE)}
    job_dirs |= {path.parent.parent for path in sweep_dir.rglob(f"{CHECKPOINT_DIR}/{LAST_CHECKPOINT}")}
    if not any(holds_a_run(job_dir) for job_dir in job_dirs):
        return
    identity_file = sweep_dir / SWEEP_IDENTITY_FILE
    if not identity_file.exists():
        raise RunDirError(
            f"sweep directory {sweep_dir} holds runs of an unknown sweep ({SWEEP_IDENTITY_FILE} is missing); "
            "choose a new hydra.sweep.dir"
        )
    previous = OmegaConf.to_container(OmegaConf.load(identity_file), resolve=True)
    current = sweep_identity(config)
    if previous != current:
        differing = [key for key in current if previous.get(key) != current[key]]
        raise RunDirError(
            f"sweep directory {sweep_dir} holds another sweep (it differs in: {', '.join(differing)}); choose a new "
            "hydra.sweep.dir, or rerun the same sweep there (same method, model, dataset and seed choices) to continue it"
        )


class RunDirGuard(Callback):
    """Refuse a bad run-level value (``consparse.run_config``), a run or sweep directory of another
    experiment, or one that cannot be created, before Hydra writes ``.hydra/`` and the log into it.

    Registered in ``conf/config.yaml`` (``hydra.callbacks.run_dir_guard``); Hydra calls
    ``on_run_start`` and ``on_multirun_start`` after composing the config and before creating any
    job directory. A single run also takes the directory's lock here, before Hydra writes into it.
    A multirun's job directories are checked and locked by ``consparse.train``.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() != 0:
            return  # DDP processes started for a run share the directory rank 0 checked
        run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))
        try:
            check_run_config(config)
            check_run_dir(run_dir, config, resume=config.get("resume") is True)
            make_run_dir(run_dir)
            lock_run_dir(run_dir)
        except ConsparseError as error:
            print(f"consparse: error: {error}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() != 0:
            return
        sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))
        try:
            check_sweep_dir(sweep_dir, config)
            lock_run_dir(sweep_dir)  # two sweeps started at once in one directory: the second stops here
        except RunDirError as error:
            print(f"consparse: error: {error}", file=sys.stderr)
            sys.exit(2)
        OmegaConf.save(OmegaConf.create(sweep_identity(config)), sweep_dir / SWEEP_IDENTITY_FILE)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if process_rank() == 0:
            unlock_run_dir(Path(os.path.abspath(str(config.hydra.sweep.dir))))
