"""Checkpoints are read weights-only: a planted pickle runs nothing, a normal resume still works."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.seed import _collect_rng_states

import consparse.checkpoint_io
import consparse.train
from consparse.checkpoint_io import CheckpointError, SafeCheckpointIO, load_checkpoint
from consparse.report.results import read_results
from consparse.run_dir import claim_run_dir

from .test_cli import TINY, train


class Payload:
    """Unpickling calls ``open(marker, "w")``: a file appears if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "state_dict": {"model.w": torch.zeros(2)}, "hyper_parameters": Payload(marker)}, path)
    return path


def test_the_payload_runs_under_an_unrestricted_load(tmp_path: Path) -> None:
    """The planted file is a real attack: torch.load(weights_only=False) creates the marker."""
    marker = tmp_path / "pwned"
    torch.load(plant(tmp_path / "last.ckpt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_a_planted_checkpoint_is_refused_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force_unsafe: bool
) -> None:
    if force_unsafe:  # torch's switch back to full unpickling when weights_only is not passed
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "last.ckpt", marker)
    refusal = rf"{path} was refused: .*GLOBAL io.open was not an allowed global by default\)"
    with pytest.raises(CheckpointError, match=refusal) as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match=str(path)):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_an_unreadable_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=f"{path} is not a readable checkpoint"):
        load_checkpoint(path)
    path.write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_random_generator_states_load(tmp_path: Path) -> None:
    states = _collect_rng_states()
    torch.save({"rng": states, "array": np.arange(3.0)}, tmp_path / "state.ckpt")
    loaded = load_checkpoint(tmp_path / "state.ckpt")
    np.testing.assert_array_equal(loaded["rng"]["numpy"][1], states["numpy"][1])
    np.testing.assert_array_equal(loaded["array"], np.arange(3.0))
    assert torch.equal(loaded["rng"]["torch"], states["torch"])


def test_a_resume_reads_the_checkpoint_weights_only(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = consparse.train.run(make_config("method=dense", "trainer.limit_train_batches=2"))
    assert first["status"] == "completed"
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(checkpoint)["epoch"] == 1  # saved when the fit ends
    read: list[Path] = []

    def spy(path: Path, map_location: object = "cpu") -> dict:
        read.append(Path(path))
        return load_checkpoint(path, map_location)

    monkeypatch.setattr(consparse.checkpoint_io, "load_checkpoint", spy)
    resumed = consparse.train.run(make_config("method=dense", "trainer.limit_train_batches=2", "trainer.max_epochs=2"))
    assert resumed["status"] == "completed" and resumed["epochs"] == 2
    assert read == [checkpoint]


@pytest.mark.slow
def test_a_planted_checkpoint_in_a_run_dir_is_one_line_through_the_cli(make_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    claim_run_dir(run_dir, make_config("method=dense", output_dir=run_dir))
    marker = tmp_path / "pwned"
    checkpoint = plant(run_dir / "checkpoints" / "last.ckpt", marker)
    result = train(["method=dense", f"hydra.run.dir={run_dir}", *TINY], tmp_path,
                   env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("consparse: error:")]
    assert len(errors) == 1 and str(checkpoint) in errors[0] and "Traceback" not in result.stderr
    assert not marker.exists()
    assert read_results(run_dir)["status"] == "failed"
