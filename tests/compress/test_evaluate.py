"""Accuracy, BatchNorm recalibration and the compression curve."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consparse.compress.count import count_macs, count_params, density
from consparse.compress.evaluate import (
    compression_curve,
    evaluate_accuracies,
    evaluate_accuracy,
    recalibrate_batchnorm,
)
from consparse.compress.lowrank import lowrank_decompose
from consparse.compress.prune import filter_prune, magnitude_prune
from consparse.errors import ConfigError
from consparse.models.mlp import MLP
from consparse.report.results import CURVE_KEYS, CURVE_KINDS

GRID = {"unstructured": [0.0, 0.5, 0.8, 0.95], "filter": [0.25, 0.5], "lowrank": [0.5, 0.75]}


def blobs(n: int, features: int, classes: int, seed: int) -> TensorDataset:
    """Linearly separable clusters: class k centred at 3 * e_k."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    inputs = torch.randn(n, features, generator=generator)
    inputs[torch.arange(n), labels] += 3.0
    return TensorDataset(inputs, labels)


def trained_mlp() -> tuple[MLP, DataLoader]:
    torch.manual_seed(0)
    model = MLP([12], 4, hidden=(16, 8))
    train = DataLoader(blobs(512, 12, 4, seed=1), batch_size=64, shuffle=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        for inputs, labels in train:
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimiser.step()
    return model.eval(), DataLoader(blobs(256, 12, 4, seed=2), batch_size=64)


def test_accuracy_is_the_fraction_of_correct_top1_predictions() -> None:
    inputs = torch.eye(4).repeat(2, 1)  # logits = inputs: the prediction is the position of the 1
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 0, 0])  # the last two are wrong
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=3)
    assert evaluate_accuracy(nn.Identity(), loader) == 6 / 8


def test_accuracy_restores_the_training_flag_and_needs_samples(small_mlp: MLP, watch) -> None:
    small_mlp.train()
    check = watch(small_mlp)
    evaluate_accuracy(small_mlp, DataLoader(blobs(10, 12, 4, seed=0), batch_size=4))
    check()
    with pytest.raises(ValueError, match="no samples"):
        evaluate_accuracy(small_mlp, [])


def test_recalibration_estimates_the_batch_statistics_cumulatively(watch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.BatchNorm1d(3), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
    model.eval()
    check = watch(model)
    data = torch.randn(40, 3) * 2 + 5
    loader = DataLoader(TensorDataset(data, torch.zeros(40, dtype=torch.long)), batch_size=10)
    recalibrated = recalibrate_batchnorm(model, loader, num_batches=3)
    seen = data[:30]
    norm = recalibrated[1]
    torch.testing.assert_close(norm.running_mean, seen.mean(dim=0))
    # cumulative average of the three batches' unbiased variances
    variances = torch.stack([seen[i : i + 10].var(dim=0) for i in (0, 10, 20)]).mean(dim=0)
    torch.testing.assert_close(norm.running_var, variances)
    assert norm.momentum == model[1].momentum and int(norm.num_batches_tracked) == 3
    assert not recalibrated.training
    check()


def test_recalibration_without_batchnorm_is_a_plain_copy(small_mlp: MLP) -> None:
    loader = DataLoader(blobs(8, 12, 4, seed=0), batch_size=4)
    copy_ = recalibrate_batchnorm(small_mlp, loader, num_batches=1)
    assert copy_ is not small_mlp
    x = torch.randn(2, 12)
    assert torch.equal(copy_(x), small_mlp(x))


def test_compression_curve_of_a_trained_mlp(watch) -> None:
    model, test_loader = trained_mlp()
    check = watch(model)
    curve = compression_curve(model, test_loader, GRID, [12], reference=copy.deepcopy(model))
    check()
    assert all(set(point) == set(CURVE_KEYS) for point in curve)
    assert {point["kind"] for point in curve} == {"unstructured", "lowrank"}  # no conv filters in an MLP
    assert all(point["kind"] in CURVE_KINDS for point in curve)
    unstructured = [point for point in curve if point["kind"] == "unstructured"]
    assert [point["amount"] for point in unstructured] == GRID["unstructured"]
    assert unstructured[0]["density"] == 1.0
    assert unstructured[0]["test_accuracy"] == evaluate_accuracy(model, test_loader) > 0.9
    densities = [point["density"] for point in unstructured]
    assert densities == sorted(densities, reverse=True) and densities[-1] < 0.1
    assert [point["macs"] for point in unstructured] == sorted(
        (p["macs"] for p in unstructured), reverse=True
    )
    lowrank = [point for point in curve if point["kind"] == "lowrank"]
    assert [point["amount"] for point in lowrank] == GRID["lowrank"]
    assert lowrank[1]["params"] < lowrank[0]["params"]
    assert all(0.0 <= point["test_accuracy"] <= 1.0 for point in curve)


def test_compression_curve_of_a_cnn_has_filter_points_and_recalibrates(small_cnn) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, 8, 8, generator=generator)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 5, (32,), generator=generator)), batch_size=16)
    grid = {"filter": [0.5], "unstructured": [0.5]}
    curve = compression_curve(
        small_cnn,
        loader,
        grid,
        [3, 8, 8],
        reference=small_cnn,
        recalibrate_loader=loader,
        recalibrate_batches=2,
    )
    assert [(point["kind"], point["amount"]) for point in curve] == [("unstructured", 0.5), ("filter", 0.5)]
    assert curve[1]["params"] < sum(p.numel() for p in small_cnn.parameters())
    with_linear = compression_curve(
        small_cnn, loader, {"filter": [0.5]}, [3, 8, 8], reference=small_cnn, filter_include_linear=True
    )
    assert with_linear[0]["kind"] == "filter"


def test_compression_curve_rejects_unknown_kinds_and_amounts(small_mlp: MLP) -> None:
    loader = DataLoader(blobs(8, 12, 4, seed=0), batch_size=4)
    with pytest.raises(ConfigError, match="unknown kind"):
        compression_curve(small_mlp, loader, {"channels": [0.5]}, [12], reference=small_mlp)
    with pytest.raises(ConfigError, match="^compression_grid.lowrank"):
        compression_curve(small_mlp, loader, {"lowrank": [1.0]}, [12], reference=small_mlp)


class _CountingLoader:
    """A loader that counts how often it is read from start to end."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


def _point_by_point(model, test_loader, grid, input_shape, reference, recalibrate_loader=None, batches=0):
    """The compression curve evaluated one compressed model at a time, as it was computed before."""
    points = []
    for kind in ("unstructured", "filter", "lowrank"):
        for amount in grid.get(kind, ()):
            if kind == "unstructured":
                compressed = magnitude_prune(model, amount)
            elif kind == "filter":
                compressed = filter_prune(model, amount, include_linear=False)
            else:
                compressed = lowrank_decompose(model, amount)
            if batches:
                compressed = recalibrate_batchnorm(compressed, recalibrate_loader, batches)
            points.append({"kind": kind, "amount": amount, "test_accuracy": evaluate_accuracy(compressed, test_loader),
                           "density": density(compressed, reference),
                           "params": count_params(compressed, nonzero_only=kind != "lowrank"),
                           "macs": count_macs(compressed, input_shape)})
    return points


def test_the_batched_curve_equals_the_point_by_point_evaluation_and_reads_the_data_once() -> None:
    model, test_loader = trained_mlp()
    counting = _CountingLoader(test_loader)
    curve = compression_curve(model, counting, GRID, [12], reference=copy.deepcopy(model))
    grid = {kind: amounts for kind, amounts in GRID.items() if kind != "filter"}  # no conv filters in an MLP
    assert curve == _point_by_point(model, test_loader, grid, [12], model)
    assert counting.passes == 1


def test_the_batched_curve_of_a_cnn_with_recalibration_equals_the_point_by_point_one(small_cnn) -> None:
    model = small_cnn.eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(48, 3, 8, 8, generator=generator)
    data = TensorDataset(images, torch.randint(0, 5, (48,), generator=generator))
    test_loader, train_loader = DataLoader(data, batch_size=16), _CountingLoader(DataLoader(data, batch_size=8))
    grid = {"unstructured": [0.0, 0.5, 0.9], "filter": [0.25, 0.5], "lowrank": [0.5]}
    curve = compression_curve(model, test_loader, grid, [3, 8, 8], reference=model,
                              recalibrate_loader=train_loader, recalibrate_batches=3)
    assert train_loader.passes == 1
    assert curve == _point_by_point(model, test_loader, grid, [3, 8, 8], model, train_loader.loader, 3)


def test_accuracies_of_several_models_come_from_one_pass(small_mlp: MLP, watch) -> None:
    other = copy.deepcopy(small_mlp)
    with torch.no_grad():
        next(other.parameters()).mul_(-1)
    small_mlp.train()
    check = watch(small_mlp)
    loader = _CountingLoader(DataLoader(blobs(40, 12, 4, seed=3), batch_size=8))
    accuracies = evaluate_accuracies([small_mlp, other], loader)
    check()
    assert loader.passes == 1
    assert accuracies == [evaluate_accuracy(small_mlp, loader.loader), evaluate_accuracy(other, loader.loader)]
