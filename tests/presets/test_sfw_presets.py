"""The SFW presets (Zimmer, Spiegel & Pokutta): their headers, the authors' settings they must keep,
and one tiny epoch of every GPU preset on fake files in the official dataset formats."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from consparse.train import run

from ..data.test_cifar_datamodule import official, write_fake_cifar  # noqa: F401 - the fixture is used by name
from ..data.test_imagenet_datamodule import CLASSES, write_fake_imagenet

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "conf" / "experiment"
SFW_PRESETS = sorted(path.stem for path in EXPERIMENTS.glob("sfw_*.yaml"))

# The settings of each setup (dataset x model) as the authors' code has them (ZIB-IOL/compression-aware-SFW:
# config.py, runners/baseRunner.py, models/*): the whole training split (no validation hold-out),
# RandomRotation(15) after crop and flip on CIFAR-100 only, the model of the setup.
SETUPS: dict[str, dict[str, Any]] = {
    "cifar10_resnet18": {"model.name": "resnet18", "dataset.name": "cifar10", "dataset.rotation": 0.0},
    "cifar100_wrn28_10": {
        "model.name": "wrn28_10",
        "model.depth": 28,
        "model.widen_factor": 10,
        "model.dropout": 0.3,
        "dataset.name": "cifar100",
        "dataset.rotation": 15,
    },
    "imagenet_resnet50": {"model.name": "resnet50", "dataset.name": "imagenet", "dataset.image_size": 224},
}
SETUP_COMMON = {
    "dataset.val_fraction": 0.0,
    "evaluation.recalibrate_bn_batches": 0,
    "evaluation.lowrank_layers": "conv",
}

# Per row kind, the authors' SFW settings (optimizers.SFW, constraints.define_constraints and the
# pretrainedRunner strategies): summed heavy-ball momentum, no weight decay, per-iteration schedules,
# sets sized from 100 re-initialisations, the constraint table, and the compression the row reports.
SFW_COMMON = {
    "method.name": "sfw",
    "method.target_density": None,
    "method.scheduler_interval": "step",
    "method.optimizer.momentum_form": "sum",
    "method.optimizer.rescale": "gradient",
    "method.optimizer.step_rule": "lr",
    "method.constraint.scope": "layer",
    "method.constraint.mode": "initialization",
    "method.constraint.init_norm_samples": 100,
}
EVERY_TENSOR_IN_THE_SET = {
    f"method.constraint.table.{kind}": "same" for kind in ("conv", "linear", "bias", "batchnorm", "other")
}
CONVS_IN_THE_SET = {
    "method.constraint.table.conv": "same",
    **{f"method.constraint.table.{kind}": "l2" for kind in ("linear", "bias", "batchnorm", "other")},
}
ROWS: dict[str, dict[str, Any]] = {
    "unstructured": {
        "method.constraint.kind": "ksupport",
        **EVERY_TENSOR_IN_THE_SET,
        "curve": {"unstructured"},
    },
    "filter": {"method.constraint.kind": "group_ksupport", **CONVS_IN_THE_SET, "curve": {"filter"}},
    "lowrank": {"method.constraint.kind": "spectral_ksupport", **CONVS_IN_THE_SET, "curve": {"lowrank"}},
    "sgd": {
        "method.name": "dense",
        "method.target_density": None,
        "method.scheduler_interval": "step",
        "method.optimizer.nesterov": False,
        "curve": {"unstructured", "filter", "lowrank"},
    },
}

# The values chosen where the paper could not be read (each preset's Deviations line says so):
# kept here so that a change to them is a deliberate one.
UNVERIFIED: dict[str, dict[str, Any]] = {
    "cifar10_resnet18": {
        "trainer.max_epochs": 200,
        "dataset.batch_size": 128,
        "sgd_weight_decay": 5e-4,
        "ksupport_k": 0.05,
    },
    "cifar100_wrn28_10": {
        "trainer.max_epochs": 200,
        "dataset.batch_size": 128,
        "sgd_weight_decay": 5e-4,
        "ksupport_k": 0.05,
    },
    "imagenet_resnet50": {
        "trainer.max_epochs": 90,
        "dataset.batch_size": 256,
        "sgd_weight_decay": 1e-4,
        "ksupport_k": 0.1,
    },
}
UNVERIFIED_SFW = {
    "method.optimizer.lr": 0.1,
    "method.optimizer.momentum": 0.9,
    "method.constraint.value": 10.0,
    "structured_k": 0.3,
    "method.scheduler._target_": "torch.optim.lr_scheduler.LinearLR",
}
# Words each reproduction preset's Deviations line must name, one per unverified choice.
UNVERIFIED_WORDS = ("UNVERIFIED", "epochs", "batch", "lr", "momentum", "evaluated amounts")


def reproduction_presets() -> list[tuple[str, str, str]]:
    """``(preset, setup, row)`` of every reproduction preset."""
    found = []
    for setup in SETUPS:
        found += [(f"sfw_{setup}_{row}", setup, row) for row in ("unstructured", "filter", "lowrank")]
        found.append((f"sfw_sgd_{setup}", setup, "sgd"))
    return found


REPRODUCTIONS = reproduction_presets()
HEADER = [
    r"# @package _global_",
    r"# Paper: .*Zimmer, Spiegel.*Pokutta.*\. (Table (\d+|\(number not verified\)), row \"[^\"]+\"|Figure \d+.*|not a table row: .+)\.",
    r"# Published: .+\.",
    r"# Deviations: .+\.",
    r"# Hardware: hardware=(cpu|gpu|multigpu|slurm), \d+ GPU\(s\); expected wall time .+ \(.+\)\.",
    r"# Status: (run here.*|ready, not run: no data.*|not reachable: .+)",
]


def composed(preset: str, make_config, *overrides: str):
    return make_config(f"experiment={preset}", *overrides, fast=False)


def value(cfg, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=True)


def test_every_reproduction_preset_exists_and_nothing_else_claims_a_row():
    names = {name for name, _, _ in REPRODUCTIONS}
    assert names <= set(SFW_PRESETS), sorted(names - set(SFW_PRESETS))
    for preset in set(SFW_PRESETS) - names:
        assert "not a table row:" in (EXPERIMENTS / f"{preset}.yaml").read_text().splitlines()[1], preset


@pytest.mark.parametrize("preset", SFW_PRESETS)
def test_header_has_the_six_lines_in_order(preset):
    lines = (EXPERIMENTS / f"{preset}.yaml").read_text().splitlines()
    for pattern, line in zip(HEADER, lines[:6]):
        assert re.fullmatch(pattern, line), f"{preset}: {line!r} does not match {pattern!r}"


@pytest.mark.parametrize(
    ("preset", "setup", "row"), REPRODUCTIONS, ids=[name for name, _, _ in REPRODUCTIONS]
)
def test_reproduction_keeps_the_authors_settings(make_config, preset, setup, row):
    cfg = composed(preset, make_config)
    expected = {**SETUPS[setup], **SETUP_COMMON, **(SFW_COMMON if row != "sgd" else {}), **ROWS[row]}
    curve = expected.pop("curve")
    for key, wanted in expected.items():
        assert value(cfg, key) == wanted, (
            f"{preset}: {key} = {value(cfg, key)!r}, the authors' setting is {wanted!r}"
        )
    grid = {kind for kind, amounts in cfg.evaluation.compression_grid.items() if amounts}
    assert grid == curve, f"{preset} evaluates {grid}, the row reports {curve}"
    if row != "sgd":
        assert value(cfg, "method.optimizer._target_") == "consparse.optim.FrankWolfe"
        assert "weight_decay" not in cfg.method.optimizer, "SFW takes no weight decay"


@pytest.mark.parametrize(
    ("preset", "setup", "row"), REPRODUCTIONS, ids=[name for name, _, _ in REPRODUCTIONS]
)
def test_unverified_choices_are_the_recorded_ones_and_declared(make_config, preset, setup, row):
    cfg = composed(preset, make_config)
    chosen = UNVERIFIED[setup]
    assert value(cfg, "trainer.max_epochs") == chosen["trainer.max_epochs"]
    assert value(cfg, "dataset.batch_size") == chosen["dataset.batch_size"]
    assert value(cfg, "method.scheduler._target_") == UNVERIFIED_SFW["method.scheduler._target_"]
    if row == "sgd":
        assert value(cfg, "method.optimizer.weight_decay") == chosen["sgd_weight_decay"]
        assert (value(cfg, "method.optimizer.lr"), value(cfg, "method.optimizer.momentum")) == (0.1, 0.9)
    else:
        for key in ("method.optimizer.lr", "method.optimizer.momentum", "method.constraint.value"):
            assert value(cfg, key) == UNVERIFIED_SFW[key], key
        k = chosen["ksupport_k"] if row == "unstructured" else UNVERIFIED_SFW["structured_k"]
        assert value(cfg, "method.constraint.k") == k
    deviations = (EXPERIMENTS / f"{preset}.yaml").read_text().splitlines()[3]
    for word in UNVERIFIED_WORDS:
        assert word in deviations, f"{preset}: the Deviations line does not declare {word!r}"


def fake_data(tmp_path: Path, setup: str, official) -> list[str]:  # noqa: F811
    """Fake files of the setup's dataset under ``tmp_path`` and the overrides reading them, at tiny size."""
    root = tmp_path / "data"
    if setup == "imagenet_resnet50":
        write_fake_imagenet(root)
        return [
            f"dataset.root={root}",
            f"dataset.num_classes={len(CLASSES)}",
            "dataset.image_size=32",
            "dataset.resize_size=36",
            "dataset.num_workers=0",
            "model.stem=imagenet",
        ]
    from consparse.data.cifar import CIFAR10DataModule, CIFAR100DataModule

    module = CIFAR10DataModule if setup.startswith("cifar10_") else CIFAR100DataModule
    write_fake_cifar(root, module, official)
    tiny_model = ["model.depth=10", "model.widen_factor=1"] if setup == "cifar100_wrn28_10" else []
    # CIFAR-100 batches are made and rotated by the device path (the CPU here), CIFAR-10 by the DataLoader.
    on_device = ["dataset.on_device=true"] if setup == "cifar100_wrn28_10" else []
    return [f"dataset.root={root}", "dataset.download=false", *tiny_model, *on_device]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "setup", "row"), REPRODUCTIONS, ids=[name for name, _, _ in REPRODUCTIONS]
)
def test_one_tiny_epoch_on_fake_files_runs_end_to_end(make_config, tmp_path, official, preset, setup, row):  # noqa: F811
    overrides = fake_data(tmp_path, setup, official)
    shrink = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.log_every_n_steps=1",
        "dataset.batch_size=4",
        "trainer.enable_progress_bar=false",
        "evaluation.latency.min_run_time=0.01",
        "evaluation.latency.rounds=1",
        "evaluation.latency.budget_s=0.5",
        "evaluation.export=false",
    ]
    if row != "sgd":
        shrink.append("method.constraint.init_norm_samples=2")
    # One amount per reported kind keeps the SVDs of the low-rank points few.
    cfg = composed(preset, make_config, *overrides, *shrink)
    reported = [kind for kind, amounts in cfg.evaluation.compression_grid.items() if amounts]
    cfg.evaluation.compression_grid = {
        kind: ([0.5] if kind in reported else []) for kind in ("unstructured", "filter", "lowrank")
    }
    results = run(cfg)
    assert results["status"] == "completed"
    assert [(point["kind"], point["amount"]) for point in results["compression_curve"]] == [
        (kind, 0.5) for kind in reported
    ]
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["epochs"] == 1
