"""The evaluation after training: its config group, its phase timings, and ddp_spawn's fit record."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consparse.errors import ConfigError
from consparse.evaluation import EvaluationSettings
from consparse.report.results import read_results
from consparse.summary import format_summary
from consparse.timing import EVALUATION_PHASES, PhaseTimer, evaluation_seconds
from consparse.train import run

REPO = Path(__file__).resolve().parents[1]

# The evaluation node as conf/config.yaml held it before it became the `evaluation` group.
PREVIOUS_EVALUATION = {
    # nm came later, empty by default (its key there so that the command line can set it).
    "compression_grid": {"unstructured": [0.0, 0.5, 0.9, 0.95, 0.98, 0.99], "filter": [0.5], "lowrank": [0.5],
                         "nm": []},
    "recalibrate_bn_batches": 0,
    "latency": {"threads": 1, "batch_size": 1, "min_run_time": 0.2, "rounds": 3},
    "export": True,
    "device": "auto",
}


def test_the_default_evaluation_keeps_the_previous_values(make_config) -> None:
    evaluation = make_config(fast=False).evaluation
    for key, value in PREVIOUS_EVALUATION.items():
        if key == "latency":
            assert {name: evaluation.latency[name] for name in value} == value
        else:
            assert evaluation[key] == value
    assert evaluation.latency.budget_s > 0 and evaluation.latency.min_repeats >= 1


def test_a_null_grid_switches_the_curve_off_and_an_empty_mapping_does_not(make_config) -> None:
    assert EvaluationSettings.from_config(make_config("evaluation.compression_grid=null").evaluation).compression_grid == {}
    # Hydra merges a mapping into the existing one: every kind of the default grid stays.
    merged = EvaluationSettings.from_config(make_config("evaluation.compression_grid={}").evaluation).compression_grid
    assert set(merged) == {"unstructured", "filter", "lowrank"}


def test_a_run_records_its_phases_and_they_add_up_to_its_wall_time(
    make_config, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config("method=dense", "model.hidden=[16]", "evaluation.compression_grid={unstructured:[0.5]}")
    # The garbage collection that ends run() frees the job for the next one of a multirun: cleanup
    # after the results are written, and in this test process a slow one (its heap is every test's).
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    start = time.perf_counter()
    results = run(cfg)
    wall = time.perf_counter() - start
    phases = read_results(tmp_path / "run")["phase_seconds"]
    assert phases == results["phase_seconds"]
    assert list(phases) == ["setup", "fit", "finalize", *EVALUATION_PHASES]
    assert all(seconds >= 0 for seconds in phases.values())
    # Laps cover the run without gaps: only writing results.json and the summary come after them.
    assert 0.8 * wall <= sum(phases.values()) <= wall
    summary = capsys.readouterr().out
    assert f"evaluation {evaluation_seconds(phases):.1f}" in summary and "latency" in summary


def test_the_quick_evaluation_has_a_short_curve_and_still_exports(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=dense", "model.hidden=[16]", "evaluation=quick", fast=False)
    assert cfg.evaluation.latency.budget_s <= 0.5
    results = run(cfg)
    assert [(p["kind"], p["amount"]) for p in results["compression_curve"]] == [("unstructured", 0.9), ("lowrank", 0.5)]
    assert (tmp_path / "run" / results["export"]).is_file()
    assert results["latency"]["budget_s"] == cfg.evaluation.latency.budget_s


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("evaluation.latency.budget_s=0", "evaluation.latency.budget_s"),
        ("evaluation.latency.min_repeats=0", "evaluation.latency.min_repeats"),
        ("evaluation.latency.rounds=0", "evaluation.latency.rounds"),
        ("evaluation.latency.large_batch_size=0", "evaluation.latency.large_batch_size"),
        ("+evaluation.latency.repeats=3", "evaluation.latency"),
    ],
)
def test_bad_latency_settings_fail_before_training(make_config, tmp_path: Path, override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run(make_config("method=dense", override))
    assert caught.value.field == field
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_phase_timer_books_laps_and_the_summary_prints_them() -> None:
    timer = PhaseTimer()
    timer.lap("fit")
    timer.lap("curve")
    timer.lap("fit")
    assert list(timer.as_dict()) == ["fit", "curve"]
    phases = {"setup": 1.0, "fit": 4.0, "finalize": 0.0, "test_accuracy": 0.5, "curve": 2.0, "latency": 1.0}
    assert evaluation_seconds(phases) == 3.5
    results = {"method": "dense", "model": "mlp", "dataset": "digits", "seed": 0, "test_accuracy": 0.9,
               "density": 1.0, "params": 10, "dense_params": 10, "macs": 10, "dense_macs": 10, "latency_ms": 0.1,
               "dense_latency_ms": 0.1, "latency": {"batch_size": 1, "threads": 1}, "epochs": 1,
               "train_seconds": 4.0, "phase_seconds": phases}
    lines = format_summary(results, Path("run")).splitlines()
    assert any("8.5: setup 1.0, fit 4.0, finalize 0.0, evaluation 3.5" in line for line in lines)
    assert any("test_accuracy 0.5, curve 2.0, latency 1.0" in line for line in lines)
    del results["phase_seconds"]  # results written before phases were recorded still print
    assert "time (s)" not in format_summary(results, Path("run"))


@pytest.mark.slow
@pytest.mark.ddp
def test_a_ddp_spawn_run_records_its_epochs_and_fit_seconds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "method=dense", "hardware=cpu_ddp", "trainer.strategy=ddp_spawn",
         "trainer.max_epochs=1", "evaluation=quick", "evaluation.compression_grid=null", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(run_dir)
    assert results["hardware"]["world_size"] == 2
    assert results["epochs"] >= 1 and results["train_seconds"] > 0
    assert results["phase_seconds"]["fit"] >= results["train_seconds"]
