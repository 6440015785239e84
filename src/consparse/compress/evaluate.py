"""Accuracy, BatchNorm recalibration and the compression curve (prune / decompose, no retraining)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from consparse.compress.count import count_macs, count_params, density, flop_profile
from consparse.compress.lowrank import decomposable_layers, lowrank_decompose
from consparse.compress.nm import nm_prune
from consparse.compress.prune import Scope, filter_prunable_layers, filter_prune, magnitude_prune_amounts
from consparse.curve_kinds import CURVE_KINDS, PATTERN_KINDS
from consparse.errors import ParameterError
from consparse.nm_pattern import parse_nm
from consparse.validation import check_int, check_range


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
    return evaluate_accuracies([model], loader, device)[0]


def evaluate_accuracies(
    models: Sequence[nn.Module], loader: Iterable[Any], device: str | torch.device = "cpu"
) -> list[float]:
    """``evaluate_accuracy`` of each model in one pass over ``loader``: every batch feeds every model.

    The loader (data reading, decoding, transfer to the device) runs once however many models
    there are; each model sees the same batches as it would alone, so its accuracy is the same.
    """
    device = torch.device(device)
    evaluated = [_on_device(model, device) for model in models]
    was_training = [model.training for model in evaluated]
    correct = [0] * len(evaluated)
    seen = 0
    try:
        for model in evaluated:
            model.eval()
        with torch.inference_mode():
            for batch in loader:
                inputs, targets = _inputs_and_targets(batch)
                inputs, targets = inputs.to(device), targets.to(device)
                for index, model in enumerate(evaluated):
                    correct[index] += int((model(inputs).argmax(dim=1) == targets).sum())
                seen += targets.numel()
    finally:
        for model, training in zip(evaluated, was_training):
            model.train(training)
    if seen == 0:
        raise ValueError("evaluate_accuracy: the loader yielded no samples")
    return [count / seen for count in correct]


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
    return recalibrate_batchnorms([model], loader, num_batches, device)[0]


def recalibrate_batchnorms(
    models: Sequence[nn.Module], loader: Iterable[Any], num_batches: int, device: str | torch.device = "cpu"
) -> list[nn.Module]:
    """``recalibrate_batchnorm`` of each model in one pass over ``loader`` (every batch feeds every model)."""
    check_int("recalibrate_bn_batches", num_batches, 1)
    device = torch.device(device)
    recalibrated = [copy.deepcopy(model).to(device) for model in models]
    norms = [_batchnorms(model) for model in recalibrated]
    calibrating = [(model, model.training, model_norms) for model, model_norms in zip(recalibrated, norms) if model_norms]
    if not calibrating:
        return recalibrated
    momenta = [[norm.momentum for norm in model_norms] for _, _, model_norms in calibrating]
    for model, _, model_norms in calibrating:
        model.eval()
        for norm in model_norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index >= num_batches:
                break
            inputs = _inputs_and_targets(batch)[0].to(device)
            for model, _, _ in calibrating:
                model(inputs)
    for (model, was_training, model_norms), model_momenta in zip(calibrating, momenta):
        for norm, momentum in zip(model_norms, model_momenta):
            norm.momentum = momentum
        model.train(was_training)
    return recalibrated


def _check_grid(grid: Mapping[str, Sequence[float | str]]) -> None:
    for kind, amounts in grid.items():
        if kind not in CURVE_KINDS:
            raise ParameterError(
                "compression_grid", f"unknown kind {kind!r}; allowed: {', '.join(CURVE_KINDS)}"
            )
        for amount in amounts:
            if kind in PATTERN_KINDS:
                parse_nm(amount, f"compression_grid.{kind}")
            else:
                check_range(f"compression_grid.{kind}", amount, 0.0, 1.0, high_inclusive=False)


def compressed_models(
    model: nn.Module,
    grid: Mapping[str, Sequence[float | str]],
    scope: Scope = "global",
    filter_include_linear: bool = False,
    lowrank_layers: str = "all",
) -> list[tuple[str, float | str, nn.Module]]:
    """``(kind, amount or N:M pattern, compressed copy)`` of every grid point, in curve order (see
    ``compression_curve``)."""
    _check_grid(grid)
    if lowrank_layers not in ("all", "conv", "linear"):
        raise ParameterError("lowrank_layers", f"got {lowrank_layers!r}; allowed: all, conv, linear")
    lowrank_kinds = {"include_linear": lowrank_layers != "conv", "include_conv": lowrank_layers != "linear"}
    applicable = {
        "unstructured": True,
        "filter": bool(filter_prunable_layers(model, include_linear=filter_include_linear)),
        "lowrank": bool(decomposable_layers(model, **lowrank_kinds)),
        "nm": True,
    }
    points: list[tuple[str, float | str, nn.Module]] = []
    for kind in CURVE_KINDS:
        if not applicable[kind] or not grid.get(kind):
            continue
        if kind in PATTERN_KINDS:
            patterns = [parse_nm(value, f"compression_grid.{kind}") for value in grid[kind]]
            points.extend((kind, str(pattern), nm_prune(model, pattern)) for pattern in patterns)
            continue
        amounts = [float(amount) for amount in grid[kind]]
        if kind == "unstructured":
            models = magnitude_prune_amounts(model, amounts, scope)
        elif kind == "filter":
            models = [filter_prune(model, amount, include_linear=filter_include_linear) for amount in amounts]
        else:
            models = [lowrank_decompose(model, amount, **lowrank_kinds) for amount in amounts]
        points.extend((kind, amount, compressed) for amount, compressed in zip(amounts, models))
    return points


def compression_curve(
    model: nn.Module,
    test_loader: Iterable[Any],
    grid: Mapping[str, Sequence[float | str]],
    input_shape: Sequence[int],
    reference: nn.Module,
    recalibrate_loader: Iterable[Any] | None = None,
    recalibrate_batches: int = 0,
    scope: Scope = "global",
    filter_include_linear: bool = False,
    device: str | torch.device = "cpu",
    lowrank_layers: str = "all",
) -> list[dict[str, Any]]:
    """Test accuracy, density, params and MACs of ``model`` compressed without retraining.

    ``grid`` maps a kind to the fractions removed: ``unstructured`` (magnitude pruning in
    ``scope``), ``filter`` (PFEC on convolutions; Linear neurons too with
    ``filter_include_linear``), ``lowrank`` (truncated SVD of the Linear and Conv2d layers
    ``lowrank_layers`` names: ``all``, ``conv`` or ``linear``) and ``nm`` (patterns ``"N:M"``: N:M
    magnitude pruning of every layer; the point's ``amount`` is ``1 - N/M`` and ``pattern`` the
    pattern). Kinds with no layer to act on are skipped. ``params`` counts nonzero parameters for the pruning kinds
    and all parameters (the structural size) for ``lowrank``. With ``recalibrate_loader`` and
    ``recalibrate_batches > 0``, BatchNorm statistics are re-estimated after each compression.
    Points come in the order unstructured, filter, lowrank, nm, each in the grid's order.

    Every compressed copy is built first and all are evaluated in one pass over ``test_loader``
    (and recalibrated in one pass over ``recalibrate_loader``): the points are what evaluating
    them one by one gives, for one read of the data. The copies are in memory together.
    """
    check_int("recalibrate_bn_batches", recalibrate_batches, 0)
    points = compressed_models(model, grid, scope, filter_include_linear, lowrank_layers)
    models = [compressed for _, _, compressed in points]
    if recalibrate_loader is not None and recalibrate_batches > 0 and models:
        models = recalibrate_batchnorms(models, recalibrate_loader, recalibrate_batches, device)
    accuracies = evaluate_accuracies(models, test_loader, device) if models else []
    # Pruning keeps the structure: one FlopCounter pass serves every pruned copy.
    profile = flop_profile(model, input_shape) if models else None
    return [
        {
            "kind": kind,
            **_amount(kind, amount),
            "test_accuracy": accuracy,
            "density": density(compressed, reference),
            "params": count_params(compressed, nonzero_only=kind != "lowrank"),
            "macs": count_macs(compressed, input_shape, sparse=True, profile=profile if kind != "lowrank" else None),
        }
        for (kind, amount, _), compressed, accuracy in zip(points, models, accuracies)
    ]


def _amount(kind: str, amount: float | str) -> dict[str, Any]:
    """A point's ``amount`` (the fraction removed), and its ``pattern`` for an N:M point."""
    if kind not in PATTERN_KINDS:
        return {"amount": amount}
    pattern = parse_nm(amount, f"compression_grid.{kind}")
    return {"amount": 1.0 - pattern.density, "pattern": str(pattern)}
