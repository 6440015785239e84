"""``method=sfw`` end to end: results.json with the compression curve, constraints respected, config
validation, resumption, the experiment presets, and a cpu_ddp run."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from consparse.config import instantiate_node
from consparse.errors import ConfigError
from consparse.methods import build_method
from consparse.methods.sfw import SFWMethod
from consparse.models import build_model
from consparse.optim import FrankWolfe
from consparse.report.results import read_results, validate_results
from consparse.train import run

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("sfw_*.yaml"))


def logged_metric(run_dir: Path, name: str) -> list[float]:
    values = []
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with path.open() as handle:
            values += [float(row[name]) for row in csv.DictReader(handle) if row.get(name)]
    return values


def test_mlp_run_writes_results_with_the_compression_curve(make_config, tmp_path: Path) -> None:
    cfg = make_config(
        "method=sfw", "model=mlp", "dataset=digits", "method.target_density=0.2", "trainer.max_epochs=2"
    )
    results = run(cfg)
    on_disk = read_results(tmp_path / "run")
    validate_results(on_disk)
    assert on_disk["status"] == "completed" and on_disk["method"] == "sfw"
    # The deployed model is the trained one pruned globally to the target (k followed it: 20 %).
    assert on_disk["density"] == pytest.approx(0.2, abs=1e-3)
    curve = on_disk["compression_curve"]
    assert {p["kind"] for p in curve} == {"unstructured", "lowrank"}  # an MLP has no conv filters
    assert [p["amount"] for p in curve if p["kind"] == "unstructured"] == [0.0, 0.5, 0.9, 0.95, 0.98, 0.99]
    assert curve[0]["test_accuracy"] > 0.3, "two SFW epochs on digits learn well above chance (0.1)"
    metrics = on_disk["method_metrics"]
    assert metrics["constraint_kind"] == "ksupport" and metrics["k"] == 0.2
    assert all(c["feasible"] for c in metrics["constraints"].values()), "every iterate stays in its set"
    assert metrics["constraints"]["layers.1.weight"]["k"] == int(0.2 * 64 * 300)
    assert math.isfinite(metrics["fw_gap"]) and set(metrics["fw_gap_per_group"]) == set(
        metrics["constraints"]
    )
    assert len(logged_metric(tmp_path / "run", "train/fw_gap")) == 2, "the FW gap is logged every epoch"
    assert results["test_accuracy"] == on_disk["test_accuracy"]


@pytest.mark.parametrize("kind", ["group_ksupport", "spectral_ksupport"])
def test_lenet5_structured_sets_give_all_curve_kinds(make_config, kind: str) -> None:
    cfg = make_config(
        "method=sfw",
        "model=lenet5",
        "dataset=digits",
        "dataset.image_size=28",
        f"method.constraint.kind={kind}",
        "method.constraint.k=0.3",
        "method.target_density=null",
    )
    results = run(cfg)
    validate_results(results)
    assert {p["kind"] for p in results["compression_curve"]} == {"unstructured", "filter", "lowrank"}
    constraints = results["method_metrics"]["constraints"]
    assert constraints["layers.3.weight"]["set"] == kind
    assert constraints["layers.3.bias"]["set"] == "l2"
    assert all(c["feasible"] for c in constraints.values())
    assert results["density"] == pytest.approx(1.0), "no target density: the trained model is deployed as is"


def test_unconstrained_table_entries_train_by_momentum_sgd(make_config) -> None:
    cfg = make_config(
        "method=sfw",
        "method.constraint.kind=l1",
        "method.constraint.table.bias=none",
        "method.unconstrained_lr=0.01",
        "method.target_density=null",
    )
    results = run(cfg)
    metrics = results["method_metrics"]
    assert metrics["unconstrained_parameters"] == ["layers.1.bias", "layers.3.bias", "layers.5.bias"]
    assert {c["set"] for c in metrics["constraints"].values()} == {"l1"}


def test_rerun_resumes_the_optimiser_from_its_checkpoint(make_config, tmp_path: Path) -> None:
    first = run(make_config("method=sfw", "trainer.max_epochs=1"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    saved = checkpoint["optimizer_states"][0]
    assert saved["param_groups"][0]["constraint"]["set"] == "ksupport", "checkpoints hold plain descriptions"
    assert any("momentum_buffer" in state for state in saved["state"].values())
    second = run(make_config("method=sfw", "trainer.max_epochs=2"))
    assert (first["epochs"], second["epochs"]) == (1, 2)
    assert all(c["feasible"] for c in second["method_metrics"]["constraints"].values())


def _method(*overrides: str, make_config) -> SFWMethod:
    cfg = make_config("method=sfw", *overrides)
    datamodule = instantiate_node(cfg.dataset)
    return build_method(cfg.method, build_model(cfg.model, datamodule.info), datamodule.info)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("method.optimizer._target_=torch.optim.SGD", "method.optimizer"),
        ("method.constraint.kind=l0", "method.constraint.kind"),
        ("method.constraint.k=1.5", "method.constraint.k"),
        ("method.constraint.scope=everywhere", "method.constraint.scope"),
        ("method.unconstrained_lr=-1", "method.unconstrained_lr"),
    ],
)
def test_config_errors_are_raised_by_the_constructor(make_config, override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _method(override, make_config=make_config)
    assert caught.value.field == field


def test_optimizer_errors_are_raised_before_the_first_batch(make_config) -> None:
    method = _method("method.optimizer.rescale=norm", "method.scheduler=null", make_config=make_config)
    with pytest.raises(ConfigError, match="method.optimizer.rescale"):
        method.configure_optimizers()


def test_k_sets_without_k_or_target_are_rejected(make_config) -> None:
    with pytest.raises(ConfigError, match="method.constraint.k"):
        _method("method.target_density=null", make_config=make_config)


def test_parameter_groups_carry_the_constraints(make_config) -> None:
    method = _method(
        "method.constraint.scope=global",
        "method.target_density=0.05",
        "method.scheduler=null",
        make_config=make_config,
    )
    optimizer = method.configure_optimizers()
    assert isinstance(optimizer, FrankWolfe)
    pooled = optimizer.param_groups[0]
    assert pooled["name"] == "global_ksupport" and pooled["constraint"].k == int(
        0.05 * (64 * 300 + 300 * 100 + 100 * 10)
    )
    assert {g["name"] for g in optimizer.param_groups[1:]} == {
        "layers.1.bias",
        "layers.3.bias",
        "layers.5.bias",
    }


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_experiment_presets_compose_and_take_one_step(make_config, preset: str) -> None:
    # GPU-sized presets are only composed and stepped once on a tiny random batch of the dataset's shape.
    cfg = make_config(f"experiment={preset}", "method.scheduler=null")
    assert cfg.method.name in ("sfw", "dense")
    datamodule = instantiate_node(cfg.dataset)
    info = datamodule.info
    model = build_model(cfg.model, info)
    method = build_method(cfg.method, model, info)
    assert method.target_density == cfg.method.target_density
    if cfg.method.name != "sfw":
        return
    optimizer = method.configure_optimizers()
    x = torch.randn(2, *info.input_shape)
    y = torch.randint(0, info.num_classes, (2,))
    method.loss(method(x), y).backward()
    optimizer.step()
    assert optimizer.frank_wolfe_gaps()


@pytest.mark.slow
@pytest.mark.ddp
def test_cpu_ddp_run_completes(tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "method=sfw",
            "model=mlp",
            "dataset=digits",
            "hardware=cpu_ddp",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "evaluation.latency.min_run_time=0.02",
            f"hydra.run.dir={run_dir}",
        ],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    validate_results(results)
    assert results["status"] == "completed"
    assert results["hardware"]["world_size"] == 2
    assert all(c["feasible"] for c in results["method_metrics"]["constraints"].values())
