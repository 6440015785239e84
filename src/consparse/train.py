"""``run(cfg)``: the one path every method takes, from a composed config to ``results.json``.

seed -> datamodule -> model -> method -> Trainer.fit (resuming from ``last.ckpt``) ->
method.finalize -> measure the deployed model against the dense reference -> results.json.

What a run ends with: ``completed``; ``failed`` (an error, recorded with it); ``diverged`` (the
training loss stopped being finite: the run stops at that step and keeps its last finite
checkpoint); ``interrupted`` (SIGTERM, SIGUSR1 or SIGUSR2: the step is checkpointed and a rerun in
the same directory continues from it; see ``consparse.interruption``). A completed run whose test
accuracy is at chance level carries a warning in results.json (``warnings``).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from consparse.accelerate import HardwareSettings, prepare_model, release_model
from consparse.callbacks import (
    DistinctRankStreams,
    DivergenceGuard,
    EpochSummary,
    RandomState,
    RankAgreement,
    RunCheckpoint,
    SharedRunDirectory,
    TrainTimer,
)
from consparse.callbacks.divergence import non_finite_tensors
from consparse.checkpoint_io import SafeCheckpointIO
from consparse.cluster import adopt_submitit_local_tasks, launched_externally
from consparse.config import instantiate_node, job_description, job_identity
from consparse.configured_callbacks import configured_callbacks, wants_progress_bar
from consparse.data.base import ConsparseDataModule
from consparse.errors import ConfigError, ConsparseError, TrainingDiverged, config_key
from consparse.evaluation import EvaluationSettings
from consparse.gates.sync_batchnorm import SyncBatchNormKeepingGates
from consparse.interruption import RunInterrupted, SignalWatch
from consparse.loggers import finish_wandb, instantiate_logger, log_results
from consparse.measure import measure_deployment
from consparse.methods import build_method
from consparse.methods.base import SparseMethod
from consparse.models import build_model
from consparse.report.results import Results, write_results
from consparse.run_config import check_run_config
from consparse.run_dir import (
    CHECKPOINT_DIR,
    check_run_dir,
    claim_run_dir,
    last_checkpoint,
    lock_run_dir,
    process_rank,
    unlock_run_dir,
)
from consparse.start_checkpoint import check_checkpoint_fits, start_checkpoint
from consparse.summary import format_summary
from consparse.timing import PhaseTimer

log = logging.getLogger(__name__)

# How long ranks > 0 wait for rank 0 to measure and write the results.
RESULTS_TIMEOUT = timedelta(hours=24)

# A test accuracy within this fraction of the way from chance (1 / classes) to 1 is reported with a
# warning: a diverged or collapsed model (one class predicted, every gate closed) lands at or just
# above chance, e.g. 0.10-0.16 on 10 classes, and the margin still flags it on 2 or 1000 classes.
CHANCE_MARGIN = 0.1


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, finalize, measure and write ``results.json`` for one job; returns the results.

    In a multirun a failing or diverging job is recorded (``status: failed`` / ``diverged``) and the
    sweep goes on; in a single run the error propagates (after it is recorded) so that the process
    exits non-zero. A signal stops the run, and a multirun with it, as ``RunInterrupted`` (after the
    record, and after handing the SLURM job back to the queue where the signal asks for it). A
    directory that belongs to another run, or that another process is running in, raises
    RunDirError before anything is written into it. What the job built (data, model, trainer) is
    freed before it returns, so that the next job of a multirun does not start beside it.
    """
    adopt_submitit_local_tasks()
    run_dir = Path(cfg.paths.output_dir)
    identity = {**job_identity(cfg), **job_description(cfg, _task_overrides())}
    rank = process_rank()
    # Rank 0 owns the directory; DDP processes started by Lightning share it and must not re-check it.
    if rank == 0:
        ckpt_path = check_run_dir(run_dir, cfg, resume=cfg.get("resume") is True)
        lock_run_dir(run_dir)  # held already when RunDirGuard took it before Hydra wrote into the directory
        claim_run_dir(run_dir, cfg)
    else:
        ckpt_path = _existing_checkpoint(run_dir)
    watch = SignalWatch()
    try:
        with watch:
            return _train_and_measure(cfg, run_dir, identity, ckpt_path, watch)
    except BaseException as exc:  # recorded, then re-raised below unless a sweep goes on
        target = OmegaConf.select(cfg, "method.target_density")
        record = Results(
            **identity,
            status=_status(exc),
            error=f"{type(exc).__name__}: {exc}",
            traceback=None if isinstance(exc, ConsparseError) else traceback.format_exc(),
            # A layer-wise target is a ListConfig, which JSON cannot hold.
            target_density=OmegaConf.to_container(target) if OmegaConf.is_config(target) else target,
        )
        failure = record.to_json()
        if rank == 0:
            write_results(run_dir, record)
        finish_wandb(failure)
        if isinstance(exc, RunInterrupted):
            log.error("%s; recorded in %s", exc, run_dir / "results.json")
            watch.requeue()
        if isinstance(exc, Exception) and _is_multirun():
            log.error("job failed and is recorded in %s: %s", run_dir / "results.json", exc)
            return failure
        raise
    finally:
        if rank == 0:
            unlock_run_dir(run_dir)
        finish_wandb()
        # Lightning links the trainer, the module and the data module in reference cycles, which only
        # a full collection frees; CPython starts one by the count of objects, and a job's data and
        # weights are a few large tensors. A multirun's jobs share this process: without it every
        # finished job's data and model would stay in memory through the next ones.
        gc.collect()


def _status(exc: BaseException) -> str:
    if isinstance(exc, RunInterrupted):
        return "interrupted"
    if isinstance(exc, TrainingDiverged):
        return "diverged"
    return "failed"


def _set_up(
    cfg: DictConfig, ckpt_path: Path | None
) -> tuple[ConsparseDataModule, SparseMethod, Path | None, EvaluationSettings, HardwareSettings]:
    """Every check and constructor that can refuse the config, before any data is read or any step taken:
    the data module, the method (with its model), the checkpoint to start from, and the settings."""
    check_run_config(cfg)
    _check_hardware(cfg)
    _check_trainer(cfg)
    _check_resume(cfg)
    start = start_checkpoint(cfg)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    hardware = HardwareSettings.from_config(cfg.get("hardware"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # Constructors validate their config values: all of them run before any data is read.
    datamodule: ConsparseDataModule = instantiate_node(cfg.dataset, "dataset")
    info = datamodule.info
    model = build_model(cfg.model, info)
    method = build_method(cfg.method, model, info)
    datamodule.check_available()
    if ckpt_path is None and start is not None:
        check_checkpoint_fits(start, method)
        log.info("starting from %s", start)
        ckpt_path = start
    prepare_model(method.model, hardware)
    return datamodule, method, ckpt_path, settings, hardware


def _train_and_measure(
    cfg: DictConfig, run_dir: Path, identity: dict[str, Any], ckpt_path: Path | None, watch: SignalWatch
) -> dict[str, Any]:
    phases = PhaseTimer()
    datamodule, method, ckpt_path, settings, hardware = _set_up(cfg, ckpt_path)
    timer = TrainTimer()
    trainer = _build_trainer(cfg, run_dir, timer)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    phases.lap("setup")
    try:
        trainer.fit(method, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except SIGTERMException:
        raise _interrupted(trainer, run_dir, watch.received or signal.SIGTERM) from None
    release_model(method.model)
    phases.lap("fit")

    with config_key(method.config_place):  # the method's errors in finalize name their config key
        deployment = method.finalize(datamodule)
    _check_finite(deployment.model)
    phases.lap("finalize")
    # Measuring, the compression curve and the export run once, on rank 0; the other ranks wait.
    waiting = _results_barrier_group()
    if not trainer.is_global_zero:
        _wait(waiting)
        return {}
    try:
        measured = measure_deployment(cfg, deployment, datamodule, settings, run_dir, phases)
        warnings = _chance_warning(measured["test_accuracy"], datamodule.info.num_classes)
        epochs, train_seconds = timer.fit_record(trainer)
        record = Results(
            **identity,
            **measured,
            status="completed",
            warnings=warnings,
            target_density=method.target_density,
            train_seconds=round(train_seconds, 3),
            epochs=epochs,
            hardware={**_hardware_record(trainer), "compile": hardware.compile, "channels_last": hardware.channels_last},
            phase_seconds=phases.as_dict(),
        )
        write_results(run_dir, record)
        results = record.to_json()
    finally:
        if waiting is not None:
            _wait(waiting)
    log_results(trainer.loggers, results, run_dir, trainer.global_step, OmegaConf.select(cfg, "logger.wandb.log_model"))
    print(format_summary(results, run_dir), flush=True)
    for warning in warnings:
        log.warning(warning)
    return results


def _results_barrier_group() -> dist.ProcessGroup | None:
    """Under DDP, a gloo group for ranks > 0 to wait on while rank 0 measures (None in one process).

    Its own group, not the training one: waiting on gloo blocks in a socket rather than spinning on
    a GPU stream, and its timeout allows for a measurement longer than the training group's.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo", timeout=RESULTS_TIMEOUT)


def _wait(group: dist.ProcessGroup) -> None:
    dist.barrier(group=group)
    dist.destroy_process_group(group)


def _interrupted(trainer: pl.Trainer, run_dir: Path, received: signal.Signals) -> RunInterrupted:
    """The ``RunInterrupted`` for a fit that Lightning stopped on a signal, saying where and what was kept."""
    checkpoint = trainer.checkpoint_callback
    saved = isinstance(checkpoint, RunCheckpoint) and checkpoint.saved_step == trainer.global_step
    kept = (f"its checkpoint is {last_checkpoint(run_dir)}" if saved
            else f"the last checkpoint ({last_checkpoint(run_dir)}) is kept")
    again = (f"rerun the same multirun with hydra.sweep.dir={HydraConfig.get().sweep.dir}" if _is_multirun()
             else f"rerun the same command with hydra.run.dir={run_dir}")
    return RunInterrupted(
        received,
        f"stopped by {received.name} at step {trainer.global_step} (epoch {trainer.current_epoch}); {kept}; {again} "
        "to continue",
    )


def _check_finite(model: torch.nn.Module) -> None:
    bad = non_finite_tensors(model)
    if bad:
        raise TrainingDiverged(
            f"the trained model has non-finite values in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; the "
            "learning rate is the likely cause: lower method.optimizer.lr and start a new run dir"
        )


def _chance_warning(accuracy: float, num_classes: int) -> list[str]:
    """A warning when the final model is no better than guessing, which a diverged run ends at."""
    chance = 1.0 / num_classes
    if not math.isfinite(accuracy) or accuracy > chance + CHANCE_MARGIN * (1.0 - chance):
        return []
    warning = (
        f"test accuracy {accuracy:.4f} is close to chance level for {num_classes} classes (1/{num_classes} = "
        f"{chance:.4f}): the training probably diverged or collapsed (a learning rate too high, every gate "
        "closed); check train/loss in the metrics before using this result"
    )
    return [warning]


def _build_trainer(cfg: DictConfig, run_dir: Path, timer: TrainTimer) -> pl.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    extra_callbacks = configured_callbacks(cfg)
    trainer_cfg.pop("callbacks", None)
    trainer_cfg["enable_progress_bar"] = wants_progress_bar(extra_callbacks, trainer_cfg.get("enable_progress_bar"))
    if trainer_cfg.get("enable_progress_bar") is None:
        trainer_cfg["enable_progress_bar"] = sys.stdout.isatty() and "SLURM_JOB_ID" not in os.environ
    if isinstance(trainer_cfg.get("strategy"), dict):
        trainer_cfg["strategy"] = instantiate_node(trainer_cfg["strategy"], "trainer.strategy")
    callbacks: list[pl.Callback] = [
        timer, RandomState(), DivergenceGuard(), RunCheckpoint(run_dir / CHECKPOINT_DIR),
        SharedRunDirectory(run_dir), DistinctRankStreams(), RankAgreement(),
    ]
    if not trainer_cfg["enable_progress_bar"]:
        callbacks.append(EpochSummary(timer))
    callbacks += extra_callbacks
    loggers = [instantiate_logger(node, cfg, run_dir) for node in (cfg.logger or {}).values() if node is not None]
    # Lightning's own sync_batchnorm conversion would turn gated BatchNorms into plain ones.
    plugins: list[Any] = [SafeCheckpointIO()]
    if trainer_cfg.get("sync_batchnorm"):
        plugins.append(SyncBatchNormKeepingGates())
    return pl.Trainer(
        **trainer_cfg,
        default_root_dir=str(run_dir),
        callbacks=callbacks,
        logger=loggers or False,
        enable_model_summary=False,
        plugins=plugins,
    )


def _hardware_record(trainer: pl.Trainer) -> dict[str, Any]:
    """Where the job ran: enough to tell a DDP or SLURM run from a single process, and whether its ranks
    ended the fit in the same state (``ranks_agree``: null in one process)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    disagreeing = next(callback for callback in trainer.callbacks if isinstance(callback, RankAgreement)).disagreeing
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "cluster_environment": type(environment).__name__ if environment is not None else None,
        "precision": str(trainer.precision),
        "ranks_agree": None if disagreeing is None else not disagreeing,
        **({"ranks_disagree_on": disagreeing} if disagreeing else {}),
    }


def _check_hardware(cfg: DictConfig) -> None:
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.accelerator",
            f"'{accelerator}' was requested (hardware=gpu/multigpu/slurm) but no CUDA device is visible; "
            "use hardware=cpu or hardware=cpu_ddp on this machine",
        )
    strategy = cfg.trainer.get("strategy")
    strategy_name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    spawns_itself = "ddp" in strategy_name.lower() and "spawn" not in strategy_name.lower()
    if _is_multirun() and spawns_itself and not launched_externally():
        raise ConfigError(
            "trainer.strategy",
            "DDP that launches its own processes re-runs the whole sweep in every rank under a local multirun; "
            "use hardware=slurm (one task per device), hydra/launcher=submitit_local with "
            "hydra.launcher.tasks_per_node=<devices> on one machine, trainer.strategy=ddp_spawn, or run the jobs "
            "one at a time",
        )


def _check_trainer(cfg: DictConfig) -> None:
    max_epochs = cfg.trainer.get("max_epochs")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(
            "trainer.max_epochs",
            f"got {max_epochs!r}; allowed: an integer >= 1 (with 0 the untrained model would be measured and reported)",
        )
    limit = cfg.trainer.get("limit_train_batches")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError("trainer.limit_train_batches", f"got {limit!r}; allowed: null, a fraction in (0, 1] or a batch count >= 1")


def _check_resume(cfg: DictConfig) -> None:
    resume = cfg.get("resume", False)
    if not isinstance(resume, bool):
        raise ConfigError("resume", f"got {resume!r}; allowed: true or false")


def _existing_checkpoint(run_dir: Path) -> Path | None:
    checkpoint = last_checkpoint(run_dir)
    return checkpoint if checkpoint.exists() else None


def _task_overrides() -> list[str]:
    """The job's command-line overrides (a multirun job's own values); none outside Hydra's entry point."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
