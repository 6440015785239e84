"""Accuracy, BatchNorm recalibration and the compression curve (prune / decompose, no retraining)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from consparse.compress.count import count_macs, count_params, density
from consparse.compress.lowrank import decomposable_layers, lowrank_decompose
from consparse.compress.prune import Scope, filter_prunable_layers, filter_prune, magnitude_prune
from consparse.errors import ConfigError
from consparse.validation import check_int, check_range

CURVE_KINDS = ("unstructured", "filter", "lowrank")


def _on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` itself when it already lives on ``device``, else a copy moved there."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None or tensor.device == device:
        return model
    return copy.deepcopy(model).to(device)


def _inputs_and_targets(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch is ``(inputs, targets, ...)`` as the datamodules yield it."""
    return batch[0], batch[1]


def evaluate_accuracy(model: nn.Module, loader: Iterable[Any], device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy (a fraction) of ``model`` on ``loader`` of ``(inputs, targets)`` batches.

    Runs in eval mode under ``torch.inference_mode``; the model's train/eval flag is restored.
    """
    device = torch.device(device)
    evaluated = _on_device(model, device)
    was_training = evaluated.training
    evaluated.eval()
    correct = 0
    seen = 0
    try:
        with torch.inference_mode():
            for batch in loader:
                inputs, targets = _inputs_and_targets(batch)
                predictions = evaluated(inputs.to(device)).argmax(dim=1)
                correct += int((predictions == targets.to(device)).sum())
                seen += targets.numel()
    finally:
        evaluated.train(was_training)
    if seen == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no samples")
    return correct / seen


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def recalibrate_batchnorm(
    model: nn.Module, loader: Iterable[Any], num_batches: int, device: str | torch.device = "cpu"
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``num_batches`` batches.

    Statistics are reset and accumulated as a cumulative average (``momentum=None``); only the
    BatchNorm layers run in training mode (dropout stays off). Without BatchNorm the copy is
    returned unchanged. Pruning shifts activation statistics, so a pruned model evaluated with the
    dense model's running statistics understates what the pruned weights can do.
    """
    check_int("evaluation.recalibrate_bn_batches", num_batches, 1)
    recalibrated = copy.deepcopy(model).to(torch.device(device))
    norms = _batchnorms(recalibrated)
    if not norms:
        return recalibrated
    was_training = recalibrated.training
    momenta = [norm.momentum for norm in norms]
    recalibrated.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index >= num_batches:
                break
            inputs, _ = _inputs_and_targets(batch)
            recalibrated(inputs.to(torch.device(device)))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    recalibrated.train(was_training)
    return recalibrated


def _check_grid(grid: Mapping[str, Sequence[float]]) -> None:
    for kind, amounts in grid.items():
        if kind not in CURVE_KINDS:
            raise ConfigError(
                "evaluation.compression_grid", f"unknown kind {kind!r}; allowed: {', '.join(CURVE_KINDS)}"
            )
        for amount in amounts:
            check_range(f"evaluation.compression_grid.{kind}", amount, 0.0, 1.0, high_inclusive=False)


def compression_curve(
    model: nn.Module,
    test_loader: Iterable[Any],
    grid: Mapping[str, Sequence[float]],
    input_shape: Sequence[int],
    reference: nn.Module,
    recalibrate_loader: Iterable[Any] | None = None,
    recalibrate_batches: int = 0,
    scope: Scope = "global",
    filter_include_linear: bool = False,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Test accuracy, density, params and MACs of ``model`` compressed without retraining.

    ``grid`` maps a kind to the fractions removed: ``unstructured`` (magnitude pruning in
    ``scope``), ``filter`` (PFEC on convolutions; Linear neurons too with
    ``filter_include_linear``) and ``lowrank`` (truncated SVD of Linear and Conv2d layers). Kinds
    with no layer to act on are skipped. ``params`` counts nonzero parameters for the pruning kinds
    and all parameters (the structural size) for ``lowrank``. With ``recalibrate_loader`` and
    ``recalibrate_batches > 0``, BatchNorm statistics are re-estimated after each compression.
    Points come in the order unstructured, filter, lowrank, each in the grid's order.
    """
    _check_grid(grid)
    check_int("evaluation.recalibrate_bn_batches", recalibrate_batches, 0)
    applicable = {
        "unstructured": True,
        "filter": bool(filter_prunable_layers(model, include_linear=filter_include_linear)),
        "lowrank": bool(decomposable_layers(model)),
    }
    points: list[dict[str, Any]] = []
    for kind in CURVE_KINDS:
        if not applicable[kind]:
            continue
        for amount in grid.get(kind, ()):
            if kind == "unstructured":
                compressed = magnitude_prune(model, amount, scope)
            elif kind == "filter":
                compressed = filter_prune(model, amount, include_linear=filter_include_linear)
            else:
                compressed = lowrank_decompose(model, amount)
            if recalibrate_loader is not None and recalibrate_batches > 0:
                compressed = recalibrate_batchnorm(
                    compressed, recalibrate_loader, recalibrate_batches, device
                )
            points.append(
                {
                    "kind": kind,
                    "amount": float(amount),
                    "test_accuracy": evaluate_accuracy(compressed, test_loader, device),
                    "density": density(compressed, reference),
                    "params": count_params(compressed, nonzero_only=kind != "lowrank"),
                    "macs": count_macs(compressed, input_shape, sparse=True),
                }
            )
    return points
