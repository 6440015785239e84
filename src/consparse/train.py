"""``run(cfg)``: the one path every method takes, from a composed config to ``results.json``.

seed -> datamodule -> model -> method -> Trainer.fit (resuming from ``last.ckpt``) ->
method.finalize -> measure the deployed model against the dense reference -> results.json.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from consparse.accelerate import HardwareSettings, prepare_model, release_model
from consparse.callbacks import EpochSummary, TrainTimer
from consparse.compress.count import model_stats
from consparse.compress.evaluate import compression_curve, evaluate_accuracy
from consparse.compress.export import export_model
from consparse.compress.latency import compare_latency
from consparse.config import instantiate_node, node_name
from consparse.data.base import ConsparseDataModule
from consparse.errors import ConfigError, ConsparseError
from consparse.evaluation import EvaluationSettings
from consparse.methods import SparseMethod, build_method
from consparse.models import build_model
from consparse.report.results import write_results
from consparse.run_dir import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    check_run_dir,
    claim_run_dir,
    last_checkpoint,
    process_rank,
)
from consparse.summary import format_summary

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, finalize, measure and write ``results.json`` for one job; returns the results.

    In a multirun a failing job is recorded as ``status: failed`` and the sweep goes on; in a single
    run the error propagates (after it is recorded) so that the process exits non-zero. A directory
    that belongs to another run raises RunDirError before anything is written into it.
    """
    run_dir = Path(cfg.paths.output_dir)
    identity = {
        "method": node_name(cfg.method),
        "model": node_name(cfg.model),
        "dataset": node_name(cfg.dataset),
        "seed": cfg.seed,
    }
    rank = process_rank()
    # Rank 0 owns the directory; DDP processes started by Lightning share it and must not re-check it.
    if rank == 0:
        ckpt_path = check_run_dir(run_dir, cfg, resume=cfg.get("resume") is True)
        claim_run_dir(run_dir, cfg)
    else:
        ckpt_path = _existing_checkpoint(run_dir)
    try:
        return _train_and_measure(cfg, run_dir, identity, ckpt_path)
    except BaseException as exc:  # recorded, then re-raised below unless a sweep goes on
        failure = {
            **identity,
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": None if isinstance(exc, ConsparseError) else traceback.format_exc(),
            "target_density": OmegaConf.select(cfg, "method.target_density"),
        }
        if rank == 0:
            write_results(run_dir, failure)
        if isinstance(exc, Exception) and _is_multirun():
            log.error("job failed and is recorded in %s: %s", run_dir / "results.json", exc)
            return failure
        raise
    finally:
        _finish_wandb()


def _train_and_measure(
    cfg: DictConfig, run_dir: Path, identity: dict[str, Any], ckpt_path: Path | None
) -> dict[str, Any]:
    _check_hardware(cfg)
    _check_trainer(cfg)
    _check_resume(cfg)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    hardware = HardwareSettings.from_config(cfg.get("hardware"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    # Constructors validate their config values: all of them run before any data is read.
    datamodule: ConsparseDataModule = instantiate_node(cfg.dataset)
    info = datamodule.info
    model = build_model(cfg.model, info)
    method = build_method(cfg.method, model, info)
    datamodule.check_available()
    prepare_model(method.model, hardware)

    timer = TrainTimer()
    trainer = _build_trainer(cfg, run_dir, timer)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    trainer.fit(method, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    release_model(method.model)

    deployed = method.finalize(datamodule)
    if not trainer.is_global_zero:
        return {}
    results = _measure(cfg, method, deployed, datamodule, settings, run_dir)
    results.update(identity)
    results.update(
        status="completed",
        target_density=method.target_density,
        train_seconds=round(timer.elapsed, 3),
        epochs=int(trainer.current_epoch),
    )
    results["hardware"] = {**_hardware_record(trainer), "compile": hardware.compile,
                           "channels_last": hardware.channels_last}
    write_results(run_dir, results)
    _log_final_metrics(trainer, results)
    print(format_summary(results, run_dir), flush=True)
    return results


def _measure(
    cfg: DictConfig,
    method: SparseMethod,
    deployed: torch.nn.Module,
    datamodule: ConsparseDataModule,
    settings: EvaluationSettings,
    run_dir: Path,
) -> dict[str, Any]:
    """Everything results.json reports about the deployed model, measured with the shared compress code."""
    input_shape = datamodule.info.input_shape
    device = settings.resolve_device(cfg.trainer.get("accelerator"))
    reference = method.reference_model().eval()
    deployed = deployed.eval()
    test_loader = datamodule.test_dataloader()

    accuracy = evaluate_accuracy(deployed, test_loader, device)
    stats = model_stats(deployed.cpu(), input_shape, reference.cpu())
    latencies = compare_latency({"deployed": deployed.cpu(), "dense": reference.cpu()}, input_shape, **settings.latency)
    latency, dense_latency = latencies["deployed"], latencies["dense"]

    curve: list[dict[str, Any]] = []
    base = method.compression_base()
    if base is not None and settings.compression_grid:
        curve = compression_curve(
            base.eval(),
            test_loader,
            settings.compression_grid,
            input_shape,
            reference,
            recalibrate_loader=datamodule.train_eval_dataloader() if settings.recalibrate_bn_batches else None,
            recalibrate_batches=settings.recalibrate_bn_batches,
            device=device,
        )

    export_path = None
    if settings.export:
        spec = {**OmegaConf.to_container(cfg.model, resolve=True), "input_shape": list(input_shape),
                "num_classes": datamodule.info.num_classes}
        spec.pop("name", None)
        export_path = export_model(deployed.cpu(), run_dir, OmegaConf.to_container(cfg, resolve=True), spec)

    return {
        "test_accuracy": accuracy,
        "density": stats.density,
        "per_layer_density": stats.per_layer_density,
        "params": stats.params,
        "params_total": stats.params_total,
        "dense_params": stats.dense_params,
        "macs": stats.macs,
        "dense_macs": stats.dense_macs,
        "latency_ms": latency["ms"],
        "dense_latency_ms": dense_latency["ms"],
        "latency": {k: v for k, v in latency.items() if k != "ms"},
        "compression_curve": curve,
        "method_metrics": method.method_metrics(),
        "export": export_path,
    }


def _build_trainer(cfg: DictConfig, run_dir: Path, timer: TrainTimer) -> pl.Trainer:
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer_cfg.get("enable_progress_bar") is None:
        trainer_cfg["enable_progress_bar"] = sys.stdout.isatty() and "SLURM_JOB_ID" not in os.environ
    if isinstance(trainer_cfg.get("strategy"), dict):
        trainer_cfg["strategy"] = instantiate_node(trainer_cfg["strategy"])
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename=Path(LAST_CHECKPOINT).stem,
        save_last=False,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )
    callbacks: list[pl.Callback] = [timer, checkpoint]
    if not trainer_cfg["enable_progress_bar"]:
        callbacks.append(EpochSummary(timer))
    loggers = [_instantiate_logger(node, run_dir) for node in (cfg.logger or {}).values() if node is not None]
    return pl.Trainer(
        **trainer_cfg,
        default_root_dir=str(run_dir),
        callbacks=callbacks,
        logger=loggers or False,
        enable_model_summary=False,
    )


def _instantiate_logger(node: DictConfig, run_dir: Path) -> Any:
    """A logger; a W&B run keeps one id per run directory so that a resumed run continues it."""
    if not str(node.get("_target_", "")).endswith("WandbLogger"):
        return hydra.utils.instantiate(node)
    if node.get("id") is None:
        id_file = run_dir / WANDB_ID_FILE
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        logger = hydra.utils.instantiate(node, id=id_file.read_text().strip(), resume="allow")
    else:
        logger = hydra.utils.instantiate(node)
    _start_wandb(logger)
    return logger


def _start_wandb(logger: Any) -> None:
    """Start the W&B run now, not at fit start: a missing account stops the job before data is read."""
    import wandb

    try:
        logger.experiment  # noqa: B018 - the property starts the run (a no-op object on ranks > 0)
    except wandb.errors.UsageError as error:
        raise ConfigError(
            "logger.wandb.mode",
            f"online logging needs a W&B account ({error}); log in (`wandb login`, WANDB_API_KEY) or, "
            "without an account, use WANDB_MODE=offline (sync later with `wandb sync`) or WANDB_MODE=disabled",
        ) from None


def _hardware_record(trainer: pl.Trainer) -> dict[str, Any]:
    """Where the job ran: enough to tell a DDP or SLURM run from a single process."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    return {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "cluster_environment": type(environment).__name__ if environment is not None else None,
        "precision": str(trainer.precision),
    }


def _log_final_metrics(trainer: pl.Trainer, results: dict[str, Any]) -> None:
    final = {
        f"final/{key}": float(results[key])
        for key in ("test_accuracy", "density", "params", "macs", "latency_ms", "train_seconds")
        if isinstance(results.get(key), (int, float))
    }
    for logger in trainer.loggers:
        logger.log_metrics(final, step=trainer.global_step)
        logger.save()


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
    if _is_multirun() and spawns_itself and "SLURM_NTASKS" not in os.environ:
        raise ConfigError(
            "trainer.strategy",
            "DDP that launches its own processes re-runs the whole sweep in every rank under a local multirun; "
            "use hardware=slurm (one task per device), trainer.strategy=ddp_spawn, or run the jobs one at a time",
        )


def _check_trainer(cfg: DictConfig) -> None:
    max_epochs = cfg.trainer.get("max_epochs")
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 0:
        raise ConfigError("trainer.max_epochs", f"got {max_epochs!r}; allowed: an integer >= 0")
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


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _finish_wandb() -> None:
    """A multirun must start a new W&B run per job (wandb #1314), so close the current one."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
