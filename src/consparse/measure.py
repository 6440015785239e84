"""``measure_deployment``: everything ``results.json`` reports about a deployed model.

The one measurement every run ends with (``consparse.train``) and ``python eval.py`` repeats on an
export (``consparse.evaluate_run``): test accuracy, accuracy on the held-out validation split (what
a sweep may tune on; null without one), counts, latency at one and at a large batch, the
compression curve, the export, then the method's own figures (last: some count the work the
measurement itself does). Rank 0 only; the shared ``compress`` code does the measuring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save as safetensors_bytes

from consparse.atomic_write import write_atomically
from consparse.compress.count import model_stats
from consparse.compress.evaluate import compression_curve, evaluate_accuracy
from consparse.compress.export import EXPORT_DIR, export_model
from consparse.compress.latency import compare_latency
from consparse.compress.nm import export_nm, nm_record
from consparse.data.base import ConsparseDataModule
from consparse.evaluation import EvaluationSettings
from consparse.methods import Deployment
from consparse.models.implicit import ImplicitModel
from consparse.models.implicit_deployed import DeployedImplicitModel
from consparse.timing import PhaseTimer

# Beside an implicit model's export: its four matrices, for readers without consparse.
IMPLICIT_MATRICES_FILE = "implicit_matrices.safetensors"


def measure_deployment(
    cfg: DictConfig,
    deployment: Deployment,
    datamodule: ConsparseDataModule,
    settings: EvaluationSettings,
    run_dir: Path,
    phases: PhaseTimer | None = None,
) -> dict[str, Any]:
    """Everything results.json reports about ``deployment.model``, measured with the shared compress code.

    ``phases`` books the seconds of each measurement (test_accuracy, val_accuracy, model_stats, latency, curve,
    export, method_metrics).
    """
    phases = phases or PhaseTimer()
    input_shape = datamodule.info.input_shape
    device = settings.resolve_device(cfg.trainer.get("accelerator"))
    reference = deployment.reference.eval()
    deployed = deployment.model.eval()
    test_loader = datamodule.test_dataloader()

    accuracy = evaluate_accuracy(deployed, test_loader, device)
    phases.lap("test_accuracy")
    held_out = datamodule.held_out_dataloader()
    # What a sweep may choose hyperparameters by: the test split must never be that.
    val_accuracy = None if held_out is None else evaluate_accuracy(deployed, held_out, device)
    phases.lap("val_accuracy")
    stats = model_stats(deployed.cpu(), input_shape, reference.cpu())
    phases.lap("model_stats")
    latency, dense_latency, by_batch = latencies(deployed.cpu(), reference.cpu(), input_shape, settings.latency)
    phases.lap("latency")
    curve = _curve(deployment, datamodule, settings, device)
    phases.lap("curve")
    export_path = _export(cfg, deployment, datamodule, run_dir) if settings.export else None
    phases.lap("export")
    method_metrics = deployment.metrics()
    phases.lap("method_metrics")

    return {
        "test_accuracy": accuracy,
        "val_accuracy": val_accuracy,
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
        "latency_by_batch": by_batch,
        "compression_curve": curve,
        "method_metrics": method_metrics,
        "export": export_path,
        **nm_record(deployment.nm_pattern, deployed, reference, input_shape, device),
    }


def _curve(
    deployment: Deployment, datamodule: ConsparseDataModule, settings: EvaluationSettings, device: torch.device
) -> list[dict[str, Any]]:
    """The compression curve of ``deployment.compression_base`` (empty without a base or a grid)."""
    base = deployment.compression_base
    if base is None or not settings.compression_grid:
        return []
    return compression_curve(
        base.eval(),
        datamodule.test_dataloader(),
        settings.compression_grid,
        datamodule.info.input_shape,
        deployment.reference.eval(),
        recalibrate_loader=datamodule.train_eval_dataloader() if settings.recalibrate_bn_batches else None,
        recalibrate_batches=settings.recalibrate_bn_batches,
        device=device,
        lowrank_layers=settings.lowrank_layers,
    )


def _export(cfg: DictConfig, deployment: Deployment, datamodule: ConsparseDataModule, run_dir: Path) -> str:
    """Write the deployed model (and its N:M masks) under ``run_dir/export``; the description's path."""
    info = datamodule.info
    spec = {**OmegaConf.to_container(cfg.model, resolve=True), "input_shape": list(info.input_shape),
            "num_classes": info.num_classes}
    spec.pop("name", None)
    deployed = deployment.model.cpu()
    path = export_model(deployed, run_dir, OmegaConf.to_container(cfg, resolve=True), spec)
    if deployment.nm_pattern is not None:
        export_nm(deployed, run_dir, deployment.nm_pattern)
    if isinstance(deployed, (DeployedImplicitModel, ImplicitModel)):
        _export_matrices(deployed, Path(run_dir) / EXPORT_DIR)
    return path


def _export_matrices(deployed: DeployedImplicitModel | ImplicitModel, export_dir: Path) -> None:
    """``implicit_matrices.safetensors``: the model's ``(A, B, C, D)`` (over the kept states of a fast form).

    The fast form's kernels (levels, dense or CSR) need consparse to be read; these four matrices
    let plain PyTorch evaluate the same model by its fixed point (docs/plain_pytorch.md).
    """
    if isinstance(deployed, DeployedImplicitModel):
        A, B, C, D = deployed.as_matrices()
    else:
        A, B, C, D = deployed.A, deployed.B, deployed.C, deployed.D
    matrices = {name: m.detach().cpu().contiguous() for name, m in zip("ABCD", (A, B, C, D))}
    write_atomically(export_dir / IMPLICIT_MATRICES_FILE, safetensors_bytes(matrices, metadata={"format": "pt"}))

def latencies(
    deployed: torch.nn.Module, reference: torch.nn.Module, input_shape: Any, settings: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, float]]]:
    """Deployed and dense latency at ``batch_size``, and ``{batch: {ms, dense_ms}}`` at it and at ``large_batch_size``."""
    settings = dict(settings)
    large = settings.pop("large_batch_size", None)
    models = {"deployed": deployed, "dense": reference}
    measured = compare_latency(models, input_shape, **settings)
    by_batch = {str(measured["deployed"]["batch_size"]): measured}
    if large is not None and str(large) not in by_batch:
        by_batch[str(large)] = compare_latency(models, input_shape, **{**settings, "batch_size": large})
    summary = {batch: {"ms": runs["deployed"]["ms"], "dense_ms": runs["dense"]["ms"]} for batch, runs in by_batch.items()}
    return measured["deployed"], measured["dense"], summary
