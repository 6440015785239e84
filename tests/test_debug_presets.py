"""``debug=fast``, ``debug=overfit``, ``debug=profile``: development presets that run like any job."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.method_models import method_models

from consparse.evaluation import EvaluationSettings
from consparse.report.results import read_results, validate_results
from consparse.train import run

# `evaluation.compression_grid={}` would merge into the grid, not replace it: each kind is emptied.
NO_CURVE = tuple(f"evaluation.compression_grid.{kind}=[]" for kind in ("unstructured", "filter", "lowrank"))

# Every method with a model it accepts, on the embedded digits; dense first (the one not marked slow).
METHOD_MODELS = sorted(method_models(), key=lambda pair: pair[0] != "dense")


def test_fast_preset_wins_over_an_experiment_and_empties_the_curve(make_config) -> None:
    cfg = make_config("experiment=sfw_mnist_mlp", "debug=fast", fast=False)
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 5
    assert EvaluationSettings.from_config(cfg.evaluation).compression_grid == {}
    assert cfg.evaluation.latency.rounds == 1
    assert make_config(fast=False).trainer.max_epochs > 1, "the preset must not leak into the default job"


@pytest.mark.parametrize("method,model", METHOD_MODELS[:1] + [pytest.param(*pair, marks=pytest.mark.slow) for pair in METHOD_MODELS[1:]])
def test_fast_runs_every_method_into_a_run_dir(make_config, method: str, model: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ["debug=fast", f"method={method}", f"model={model}", "trainer.enable_progress_bar=false"]
    if model == "implicit":
        overrides.append("model.state_size=16")
    results = run(make_config(*overrides, fast=False))
    on_disk = read_results(run_dir)
    validate_results(on_disk)
    assert on_disk["status"] == "completed" and on_disk["epochs"] == 1
    assert on_disk["compression_curve"] == []
    assert (run_dir / "export" / "model.safetensors").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert results["test_accuracy"] == on_disk["test_accuracy"]


def test_overfit_reaches_full_training_accuracy(make_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run(make_config("debug=overfit", "method=dense", "trainer.enable_progress_bar=false", fast=False))
    metrics = (run_dir / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    column = header.index("train/acc")
    train_acc = [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]
    assert train_acc[-1] == pytest.approx(1.0), f"three digits batches are memorised in 30 epochs, got {train_acc[-5:]}"
    assert train_acc[0] < 0.9


def test_profile_prints_lightnings_simple_profiler_report(make_config, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config("debug=profile", "method=dense", *NO_CURVE)
    assert cfg.trainer.profiler == "simple"
    with caplog.at_level(logging.INFO):
        run(cfg)
    report = "\n".join(record.getMessage() for record in caplog.records)
    assert "FIT Profiler Report" in report and "run_training_epoch" in report
