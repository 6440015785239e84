"""End-to-end runs in-process: results.json contract, export round trip, resume, run-dir safety."""

from __future__ import annotations

import gc
import io
import json
import logging
import sys
import weakref
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import consparse.train as train_module
from consparse.callbacks import EpochSummary, TrainTimer
from consparse.compress.evaluate import evaluate_accuracy
from consparse.compress.export import load_exported
from consparse.config import instantiate_node
from consparse.errors import ConfigError, DataNotFoundError, RunDirError
from consparse.report.results import read_results, validate_results
from consparse.run_dir import archive_previous_results
from consparse.train import run


def test_tiny_run_writes_valid_results(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=dense", "model=mlp", "dataset=digits", "trainer.max_epochs=2")
    results = run(cfg)
    run_dir = tmp_path / "run"
    on_disk = read_results(run_dir)
    validate_results(on_disk)
    assert on_disk["status"] == "completed"
    assert (on_disk["method"], on_disk["model"], on_disk["dataset"], on_disk["seed"]) == ("dense", "mlp", "digits", 0)
    assert on_disk["epochs"] == 2
    assert 0.5 < on_disk["test_accuracy"] <= 1.0, "two epochs on digits learn far above chance (0.1)"
    assert on_disk["density"] == pytest.approx(1.0)
    assert on_disk["params"] == on_disk["dense_params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert on_disk["macs"] == on_disk["dense_macs"] == 64 * 300 + 300 * 100 + 100 * 10
    kinds = {point["kind"] for point in on_disk["compression_curve"]}
    assert kinds == {"unstructured", "lowrank"}, "an MLP has no conv filters, so no filter points"
    assert on_disk["hardware"]["world_size"] == 1
    assert (run_dir / "csv" / "version_0" / "metrics.csv").exists()
    assert results["test_accuracy"] == on_disk["test_accuracy"]
    # The same deployed model on the held-out validation split, measured by the same code.
    assert 0.5 < on_disk["val_accuracy"] <= 1.0 and "val_accuracy" in on_disk["phase_seconds"]


@pytest.mark.parametrize("overrides, status", [((), "completed"), (("method.optimizer.lr=1e30",), "diverged")])
def test_a_finished_job_frees_its_data_model_and_trainer(
    make_config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, overrides: tuple[str, ...],
    status: str,
) -> None:
    """A multirun runs its jobs in one process: what one job built must not outlive it, even though
    Lightning's objects refer to each other in cycles that only a full garbage collection frees."""
    monkeypatch.setattr(train_module, "_is_multirun", lambda: True)  # a failed job returns its record
    # pytest keeps every log record, and a failed job's record holds the error, whose traceback holds the job.
    caplog.set_level(logging.CRITICAL, logger=train_module.log.name)
    built: list[weakref.ref] = []
    set_up, build_trainer = train_module._set_up, train_module._build_trainer

    def spy_set_up(*args):
        datamodule, method, *rest = set_up(*args)
        built.extend([weakref.ref(datamodule), weakref.ref(method), weakref.ref(method.model)])
        return datamodule, method, *rest

    def spy_build_trainer(*args):
        trainer = build_trainer(*args)
        built.append(weakref.ref(trainer))
        return trainer

    monkeypatch.setattr(train_module, "_set_up", spy_set_up)
    monkeypatch.setattr(train_module, "_build_trainer", spy_build_trainer)
    # Until the check, no automatic collection may do the job's work for it.
    gc.disable()
    try:
        results = run(make_config("method=dense", "model.hidden=[16]", *overrides))
        alive = [type(ref()).__name__ for ref in built if ref() is not None]
    finally:
        gc.enable()
    assert results["status"] == status
    assert len(built) == 4
    assert alive == []


def test_val_accuracy_is_the_held_out_split_and_null_without_one(make_config, tmp_path: Path) -> None:
    results = run(make_config("method=dense", "model.hidden=[16]", "dataset=digits"))
    datamodule = instantiate_node(make_config("method=dense", "dataset=digits").dataset)
    model = load_exported(tmp_path / "run" / "export")
    held_out = datamodule.held_out_dataloader()
    assert held_out is not None and held_out.dataset is datamodule.val_set and len(held_out.dataset) > 100
    assert results["val_accuracy"] == pytest.approx(evaluate_accuracy(model, held_out, torch.device("cpu")))
    without = run(make_config("method=dense", "model.hidden=[16]", "dataset.val_fraction=0", output_dir=tmp_path / "all"))
    assert without["status"] == "completed" and without["val_accuracy"] is None
    assert read_results(tmp_path / "all")["val_accuracy"] is None


def test_results_say_what_the_run_belongs_to(make_config, tmp_path: Path) -> None:
    """setting, variant and the resolved method node go into results.json, completed or failed, so
    that the report never works them out from Hydra's records."""
    tuning = "{key:method.optimizer.lr,phase:final,value:0.001,factor:0.3333333,grid:[0.001,0.003],factors:[0.3333333,1.0]}"
    cfg = make_config("method=l0_penalty", "method.penalty=0.3", "setting.name=compare_x", "setting.model=mlp",
                      "variant=penalised", "trainer.max_epochs=1", f"tuning={tuning}", output_dir=tmp_path / "done")  # fmt: skip
    run(cfg)
    on_disk = read_results(tmp_path / "done")
    validate_results(on_disk)
    # A tuned sweep's record of the job, as the sweeper set it (consparse.tuned_sweep).
    assert on_disk["tuning"] == {"key": "method.optimizer.lr", "phase": "final", "value": 0.001, "factor": 0.3333333,
                                 "grid": [0.001, 0.003], "factors": [0.3333333, 1.0]}  # fmt: skip
    assert on_disk["schema_version"] == 2
    assert on_disk["setting"] == {"name": "compare_x", "model": "mlp"} and on_disk["variant"] == "penalised"
    assert on_disk["method_config"]["name"] == "l0_penalty" and on_disk["method_config"]["penalty"] == 0.3
    assert on_disk["overrides"] == []  # called without Hydra's entry point: no command line to record

    failing = make_config("method=dense", "trainer.max_epochs=0", output_dir=tmp_path / "failed")
    with pytest.raises(ConfigError):
        run(failing)
    failed = read_results(tmp_path / "failed")
    assert failed["status"] == "failed" and failed["variant"] == "dense"  # no variant given: the method's name
    assert "tuning" not in failed  # outside a tuned sweep
    assert failed["setting"] == {"name": None, "model": None} and failed["method_config"]["name"] == "dense"


def test_default_job_is_l0_on_digits_and_prints_a_table(make_config, tmp_path: Path, capsys) -> None:
    """`python train.py` (`make train`) with no overrides, cut to one epoch."""
    cfg = make_config()
    assert (cfg.method.name, cfg.model.name, cfg.dataset.name) == ("l0", "mlp", "digits")
    results = run(cfg)
    validate_results(read_results(tmp_path / "run"))
    assert results["status"] == "completed" and results["method"] == "l0"
    assert "expected_density" in results["method_metrics"]
    table = capsys.readouterr().out
    assert "consparse results" in table and "l0 / mlp / digits" in table
    assert f"{100 * results['test_accuracy']:.2f} %" in table and str(tmp_path / "run" / "results.json") in table
    assert f"(validation split {100 * results['val_accuracy']:.2f} %)" in table


def test_export_round_trip_reproduces_accuracy(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=dense", "method.target_density=0.3", "dataset=digits")
    results = run(cfg)
    loaded = load_exported(tmp_path / "run" / results["export"])
    datamodule = instantiate_node(cfg.dataset)
    datamodule.setup()
    assert evaluate_accuracy(loaded, datamodule.test_dataloader()) == pytest.approx(results["test_accuracy"])
    assert results["density"] == pytest.approx(0.3, abs=1e-3)
    # Exported tensors load without pickle.
    from safetensors.torch import load_file

    assert all(isinstance(t, torch.Tensor) for t in load_file(tmp_path / "run" / "export" / "model.safetensors").values())


def test_magnitude_finetune_keeps_mask(make_config) -> None:
    cfg = make_config("method=magnitude", "method.target_density=0.2", "method.finetune_epochs=1", "trainer.max_epochs=2")
    results = run(cfg)
    assert results["density"] == pytest.approx(0.2, abs=1e-3), "fine-tuning must not regrow pruned weights"
    assert results["method_metrics"]["finetune_epochs"] == 1


def test_magnitude_layerwise_prunes_every_layer_to_the_target(make_config) -> None:
    results = run(make_config("method=magnitude", "method.target_density=0.3", "method.prune_scope=layer"))
    assert results["method_metrics"]["prune_scope"] == "layer"
    assert results["per_layer_density"] == pytest.approx({name: 0.3 for name in results["per_layer_density"]}, abs=2e-3)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stdout", "environment", "bar"),
    [(_Terminal, {}, True), (_Terminal, {"SLURM_JOB_ID": "42"}, False), (io.StringIO, {}, False)],
    ids=["terminal", "slurm", "log-file"],
)
def test_progress_bar_in_a_terminal_epoch_lines_elsewhere(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout, environment: dict, bar: bool
) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdout", stdout())
    cfg = make_config("method=dense", "trainer.enable_progress_bar=null")
    trainer = train_module._build_trainer(cfg, tmp_path / "run", TrainTimer())
    assert (trainer.progress_bar_callback is not None) is bar
    assert any(isinstance(callback, EpochSummary) for callback in trainer.callbacks) is not bar


class _StopAtEpoch(pl.Callback):
    """Simulates a crash in the middle of a run, at the start of an epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_after_interrupted_run(make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = train_module._build_trainer

    def interrupted_trainer(cfg, run_dir, timer):
        trainer = original(cfg, run_dir, timer)
        trainer.callbacks.append(_StopAtEpoch(1))
        return trainer

    cfg = make_config("method=dense", "trainer.max_epochs=3")
    monkeypatch.setattr(train_module, "_build_trainer", interrupted_trainer)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    # Written as epoch 1 started: one epoch complete.
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(train_module, "_build_trainer", original)

    results = run(make_config("method=dense", "trainer.max_epochs=3", "resume=true"))
    assert results["epochs"] == 3
    assert results["status"] == "completed"
    # The interrupted attempt's failure record is kept, not overwritten.
    archived = json.loads((run_dir / "results.previous-1.json").read_text())
    assert archived["status"] == "failed" and "simulated crash" in archived["error"]


def test_rerun_in_same_dir_continues_and_keeps_results(make_config, tmp_path: Path) -> None:
    first = run(make_config("method=dense", "trainer.max_epochs=1"))
    second = run(make_config("method=dense", "trainer.max_epochs=2"))
    assert (first["epochs"], second["epochs"]) == (1, 2)
    assert second["train_seconds"] >= first["train_seconds"], "training time accumulates over resumed invocations"
    assert read_results(tmp_path / "run" / "results.previous-1.json")["epochs"] == 1
    metrics = sorted((tmp_path / "run" / "csv").glob("version_*/metrics.csv"))
    assert len(metrics) == 2, "each invocation keeps its own metrics file"


def test_other_experiment_never_writes_into_a_run_dir(make_config, tmp_path: Path) -> None:
    run(make_config("method=dense"))
    before = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    # A valid other experiment, and one with a bad value (whose failure record must not land there either).
    for other in (["method.target_density=0.5"], ["method.target_density=7"]):
        with pytest.raises(RunDirError, match="holds another experiment"):
            run(make_config("method=magnitude", *other))
    after = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    assert after == before


def test_a_run_that_failed_before_training_leaves_its_dir_free(make_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        run(make_config("method=dense", "method.target_density=1.5"))
    results = run(make_config("method=dense", "method.target_density=0.5"))
    assert results["status"] == "completed"
    assert read_results(tmp_path / "run" / "results.previous-1.json")["status"] == "failed"


def test_resume_true_without_checkpoint_is_an_error(make_config, tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="resume=true but there is no checkpoint"):
        run(make_config("method=dense", "resume=true"))
    assert not (tmp_path / "run" / "results.json").exists()


def test_archive_numbers_grow(tmp_path: Path) -> None:
    for expected in (1, 2):
        (tmp_path / "results.json").write_text("{}")
        assert archive_previous_results(tmp_path).name == f"results.previous-{expected}.json"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("method.target_density=1.5", "method.target_density"),
        ("method.target_density=0", "method.target_density"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("dataset.val_fraction=0.9", "dataset.val_fraction"),
        ("trainer.max_epochs=-1", "trainer.max_epochs"),
        ("model.hidden=[300,0]", "model.hidden"),
        ("method.prune_scope=local", "method.prune_scope"),
        ("evaluation.compression_grid.unstructured=[1.5]", "evaluation.compression_grid.unstructured"),
        ("resume=maybe", "resume"),
    ],
)
def test_bad_values_fail_before_compute(make_config, tmp_path: Path, override: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        run(make_config("method=dense", override))
    assert caught.value.field == field
    assert not (tmp_path / "run" / "checkpoints").exists(), "no training may happen after a config error"
    assert read_results(tmp_path / "run")["status"] == "failed"


def test_missing_dataset_names_expected_files(make_config, tmp_path: Path) -> None:
    missing_root = tmp_path / "no-data"
    with pytest.raises(DataNotFoundError) as caught:
        run(make_config("method=dense", "dataset=mnist", f"dataset.root={missing_root}", "dataset.download=false"))
    assert str(missing_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_gpu_request_without_gpu_is_a_config_error(make_config) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        run(make_config("method=dense", "hardware=gpu"))


def test_wandb_online_without_account_is_a_config_error(make_config, tmp_path: Path, monkeypatch) -> None:
    for variable in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc with a key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cfg = make_config("method=dense", "logger=wandb", "logger.wandb.mode=online")
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="WANDB_MODE=offline") as caught:
        train_module._build_trainer(cfg, tmp_path / "run", TrainTimer())
    assert caught.value.field == "logger.wandb.mode"
