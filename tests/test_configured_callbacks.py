"""Callbacks from the config (``callbacks=`` group, ``trainer.callbacks``) join the platform's own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import pytorch_lightning as pl

import consparse.train as train_module
from consparse.callbacks import TrainTimer
from consparse.errors import ConfigError
from consparse.report.results import read_results
from consparse.train import run

# `evaluation.compression_grid=null` would merge into the grid, not replace it: each kind is emptied.
NO_CURVE = tuple(f"evaluation.compression_grid.{kind}=[]" for kind in ("unstructured", "filter", "lowrank"))


def _trainer(cfg, tmp_path: Path) -> pl.Trainer:
    return train_module._build_trainer(cfg, tmp_path, TrainTimer())


def _types(trainer: pl.Trainer) -> set[str]:
    return {type(callback).__name__ for callback in trainer.callbacks}


def test_group_callbacks_are_added_to_the_platforms(make_config, tmp_path: Path) -> None:
    trainer = _trainer(make_config("callbacks=[early_stopping,lr_monitor]"), tmp_path)
    assert {"EarlyStopping", "LearningRateMonitor", "RunCheckpoint", "TrainTimer"} <= _types(trainer)


def test_trainer_callbacks_merge_instead_of_clashing(make_config, tmp_path: Path) -> None:
    """``+trainer.callbacks=[]`` used to reach Trainer twice (a TypeError)."""
    assert {"RunCheckpoint", "TrainTimer"} <= _types(_trainer(make_config("+trainer.callbacks=[]"), tmp_path))
    cfg = make_config("callbacks=early_stopping",
                      "+trainer.callbacks=[{_target_:pytorch_lightning.callbacks.LearningRateMonitor}]")
    assert {"EarlyStopping", "LearningRateMonitor", "RunCheckpoint"} <= _types(_trainer(cfg, tmp_path))


@pytest.mark.parametrize(
    "override,key",
    [
        ("+trainer.callbacks=[3]", "trainer.callbacks[0]"),
        ("+trainer.callbacks=early", "trainer.callbacks"),
        ("callbacks.early_stopping._target_=torch.nn.Identity", "callbacks.early_stopping"),
        ("callbacks.early_stopping._target_=pytorch_lightning.callbacks.NoSuchCallback", "callbacks.early_stopping"),
        ("callbacks.early_stopping.mode=sideways", "callbacks.early_stopping"),
    ],
)
def test_a_bad_callback_is_a_config_error_before_training(make_config, tmp_path: Path, override: str, key: str) -> None:
    extra = ["callbacks=early_stopping"] if override.startswith("callbacks.") else []
    with pytest.raises(ConfigError) as error:
        run(make_config(*extra, override))
    assert error.value.field == key
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_early_stopping_stops_and_lr_monitor_logs(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=dense", "trainer.max_epochs=8", *NO_CURVE,
                      "callbacks=[early_stopping,lr_monitor]",
                      "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=10.0")
    run(cfg)
    results = read_results(tmp_path / "run")
    assert results["status"] == "completed"
    assert results["epochs"] == 2, "no epoch improves val/loss by 10, so training stops after patience + 1 epochs"
    header = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert any(column.startswith("lr-") for column in header.split(","))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_rich_progress_bar_turns_the_bar_on_or_says_what_is_missing(make_config, tmp_path: Path) -> None:
    cfg = make_config("callbacks=rich_progress_bar", "trainer.enable_progress_bar=null")
    if importlib.util.find_spec("rich") is None:
        with pytest.raises(ConfigError, match="rich") as error:
            _trainer(cfg, tmp_path)
        assert error.value.field == "callbacks.rich_progress_bar"
        return
    trainer = _trainer(cfg, tmp_path)
    assert "RichProgressBar" in _types(trainer) and "EpochSummary" not in _types(trainer)
    with pytest.raises(ConfigError) as error:
        _trainer(make_config("callbacks=rich_progress_bar", "trainer.enable_progress_bar=false"), tmp_path)
    assert error.value.field == "trainer.enable_progress_bar"
