"""``hardware=slurm`` through hydra-submitit-launcher: the sbatch script it renders, and the launcher's
plumbing run for real by submitit's local executor (two tasks of one DDP job on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import submitit
from hydra import compose, initialize_config_dir

from consparse.cluster import adopt_submitit_local_tasks, launched_externally

REPO = Path(__file__).resolve().parents[1]


def _slurm_config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["hardware=slurm", "hydra.job.name=consparse", f"hydra.sweep.dir={tmp_path}",
                                            *overrides], return_hydra_config=True)


def test_slurm_hardware_renders_one_task_per_gpu_with_requeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's own ``launch`` builds the executor; the sbatch text is submitit's, not a copy of it."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    executors: list[submitit.AutoExecutor] = []

    class Recording(submitit.AutoExecutor):
        def map_array(self, fn, *iterables):
            executors.append(self)
            return []

    monkeypatch.setattr(submitit, "AutoExecutor", Recording)
    cfg = _slurm_config(tmp_path, "trainer.devices=8", "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
                        "hydra.launcher.account=proj")
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["seed=0"]], initial_job_idx=0)

    slurm = executors[0]._executor
    assert slurm.max_num_timeout == cfg.hydra.launcher.max_num_timeout > 0
    script = slurm._make_submission_file_text("python -u -m submitit.core._submit DIR", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=8", "--partition=gpu",
                 "--account=proj", f"--signal=USR2@{cfg.hydra.launcher.signal_delay_s}",
                 f"--time={cfg.hydra.launcher.timeout_min}"):
        assert f"#SBATCH {line}\n" in script, line
    # srun starts one task per GPU; each finds its rank in SLURM's variables (Lightning's SLURMEnvironment).
    assert "\nsrun " in script


def _environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    """A process environment of its own for the test (what the code under test exports stays in it)."""
    exported = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS")
    kept = {key: value for key, value in os.environ.items() if key not in exported and not key.startswith("SUBMITIT")}
    monkeypatch.setattr(os, "environ", {**kept, **variables})


def test_submitit_local_tasks_become_torch_distributed_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(monkeypatch, SUBMITIT_EXECUTOR="local", **{
        f"SUBMITIT_LOCAL_{key}": value
        for key, value in {"NTASKS": "2", "GLOBALID": "1", "LOCALID": "1", "NODEID": "0", "JOB_NUM_NODES": "1",
                           "JOB_ID": "4242"}.items()
    })
    assert not launched_externally()
    adopt_submitit_local_tasks()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["MASTER_ADDR"] and int(os.environ["MASTER_PORT"]) > 0
    assert launched_externally()


def test_a_single_submitit_task_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    _environment(monkeypatch, SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_NTASKS="1")
    adopt_submitit_local_tasks()
    assert "RANK" not in os.environ


@pytest.mark.slow
@pytest.mark.ddp
def test_submitit_launcher_runs_a_two_task_ddp_job(tmp_path: Path) -> None:
    """``-m hydra/launcher=submitit_local`` with two tasks: the job runs as one DDP job, rank 0 writes the results.

    submitit stops a job's tasks once one of them ends: results exist only if rank 1 waited for rank 0.
    """
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    args = ["-m", "hydra/launcher=submitit_local", "hardware=cpu_ddp", "hydra.launcher.tasks_per_node=${trainer.devices}",
            "hydra.launcher.timeout_min=10", "method=dense", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
            "evaluation.compression_grid=null", "evaluation.latency.min_run_time=0.02", "evaluation.latency.rounds=1",
            f"hydra.sweep.dir={sweep}"]
    completed = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["status"] == "completed", results.get("error")
    assert results["hardware"]["world_size"] == 2 and results["hardware"]["ranks_agree"] is True
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2, "one log per task"
    assert (sweep / "results.md").exists(), "the sweep report ran after the job"
