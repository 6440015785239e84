"""``train.py -m ... --cfg hydra`` (and ``--resolve``) shows the first job's config instead of a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from consparse.inspect_command import InspectionError, single_job_command

REPO = Path(__file__).resolve().parents[1]


def test_a_multirun_inspection_becomes_its_first_job() -> None:
    argv = ["train.py", "-m", "hardware=slurm", "method=dense,l0", "seed=range(3)", "trainer.max_epochs=2", "--cfg", "hydra"]
    command, note = single_job_command(argv)
    assert command == ["train.py", "hardware=slurm", "method=dense", "seed=0", "trainer.max_epochs=2", "--cfg", "hydra"]
    assert "first job" in note and "python train.py hardware=slurm method=dense seed=0" in note


@pytest.mark.parametrize("spelling", [["--cfg", "hydra"], ["--cfg=hydra"], ["-c", "hydra"]])
def test_resolving_the_hydra_node_resolves_it_within_the_whole_config(spelling: list[str]) -> None:
    command, note = single_job_command(["train.py", "hardware=slurm", *spelling, "--resolve"])
    assert command[1] == "hardware=slurm" and "--resolve" in command
    assert ("--cfg=all" in command) or command[command.index(spelling[0]) + 1] == "all"
    assert command[-2:] == ["--package", "hydra"] and "resolved within it" in note
    kept, _ = single_job_command(["train.py", "--cfg", "hydra", "--resolve", "-p", "hydra.launcher"])
    assert kept[-2:] == ["-p", "hydra.launcher"] and "--package" not in kept


@pytest.mark.parametrize(
    "argv",
    [["train.py", "-m", "seed=0,1"], ["train.py", "--cfg", "job", "seed=1"], ["train.py", "--cfg", "hydra", "seed=1"]],
)
def test_commands_hydra_handles_are_left_alone(argv: list[str]) -> None:
    assert single_job_command(argv) == (argv, None)


def test_a_sweep_that_cannot_be_enumerated_says_which_key() -> None:
    with pytest.raises(InspectionError, match=r"^method.lr: .*interval\(0,1\)"):
        single_job_command(["train.py", "-m", "method.lr=interval(0,1)", "--cfg", "job"])


def test_train_py_shows_the_slurm_launcher_of_a_multirun(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "hardware=slurm", "trainer.devices=2", "seed=0,1,2",
         "--cfg", "hydra", "--resolve", "--package", "hydra.launcher"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "consparse: note:" in result.stderr
    launcher = yaml.safe_load(result.stdout.split("\n", 1)[1])
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 2 and launcher["nodes"] == 1
    assert not (tmp_path / "outputs").exists(), "inspecting submits and writes nothing"
