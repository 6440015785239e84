"""``python train.py`` as a user runs it: help, errors, multirun + report, DDP, fake SLURM, W&B offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from consparse.report.results import read_results, validate_results
from consparse.run_dir import claim_run_dir

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train.py")
# Every job as small as it gets: digits, one epoch, short latency, no compression curve.
TINY = [
    "trainer.max_epochs=1",
    "evaluation.latency.min_run_time=0.02",
    "evaluation.latency.rounds=1",
    "evaluation.compression_grid=null",
]


def train(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, TRAIN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )


def test_help_lists_groups_and_options(tmp_path: Path) -> None:
    result = train(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for group, option in [("method", "dense"), ("model", "lenet5"), ("dataset", "mnist"), ("hardware", "cpu_ddp"),
                          ("logger", "wandb")]:
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"{group}:"))
        assert option in line


def test_bad_value_exits_nonzero_with_field_and_range(tmp_path: Path) -> None:
    result = train(["method=dense", "method.target_density=1.5", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert "method.target_density" in result.stderr and "(0.0, 1.0]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_run_dir_of_another_experiment_is_refused_before_hydra_writes(make_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # A directory holding a trained run of another experiment, with Hydra's record of it.
    claim_run_dir(run_dir, make_config("method=dense", output_dir=run_dir))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("the other run's config")
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    result = train(["method=magnitude", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 2
    assert "holds another experiment (it differs in: method)" in result.stderr and "Traceback" not in result.stderr
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before


@pytest.mark.slow
def test_multirun_two_seeds_then_report(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = train(["-m", "seed=0,1", "method=dense", "method.target_density=0.5", f"hydra.sweep.dir={sweep}", *TINY],
                   tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        results = read_results(sweep / job)
        validate_results(results)
        assert results["seed"] == int(job)
    # The multirun-end callback wrote the report.
    markdown = (sweep / "results.md").read_text()
    assert "dense" in markdown and "0.500" in markdown
    assert (sweep / "results.csv").exists() and (sweep / "pareto.png").stat().st_size > 1000


@pytest.mark.slow
def test_multirun_records_a_failed_job_and_goes_on(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = train(["-m", "method=dense", "method.target_density=0.5,7", f"hydra.sweep.dir={sweep}", *TINY], tmp_path,
                   timeout=600)
    # The sweep goes on past the failed job, writes its report, then exits non-zero for SLURM and CI.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "consparse: error: 1 of 2 jobs did not complete (1 failed); see" in result.stderr
    assert read_results(sweep / "0")["status"] == "completed"
    failed = read_results(sweep / "1")
    assert failed["status"] == "failed" and "method.target_density" in failed["error"]
    assert "Failed" in (sweep / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.ddp
def test_cpu_ddp_two_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = train(["method=dense", "hardware=cpu_ddp", f"hydra.run.dir={run_dir}", *TINY], tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = read_results(run_dir)
    assert results["hardware"]["world_size"] == 2
    assert results["hardware"]["strategy"] == "DDPStrategy"
    assert not (run_dir / "results.previous-1.json").exists(), "only rank 0 writes results"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ddp
def test_fake_slurm_two_tasks_use_slurm_environment(tmp_path: Path) -> None:
    """Two processes started 'by SLURM' (one task per device): Lightning must not spawn more."""
    run_dir = tmp_path / "run"
    port = str(_free_port())
    common = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
              "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "consparse-test", "SLURM_NODELIST": "127.0.0.1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    args = [TRAIN, "method=dense", "hardware=cpu_ddp", f"hydra.run.dir={run_dir}", *TINY]
    processes = []
    for rank in (0, 1):
        env = {**os.environ, **common, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
               "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    results = read_results(run_dir)
    assert results["hardware"]["cluster_environment"] == "SLURMEnvironment"
    assert results["hardware"]["world_size"] == 2
    # Under SLURM there is no progress bar: one line per epoch instead.
    assert "epoch 1/1" in outputs[0][0]


@pytest.mark.slow
def test_wandb_offline_needs_no_account(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_API_KEY": "",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    result = train(["method=dense", "logger=wandb", f"hydra.run.dir={run_dir}", *TINY], tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    offline_runs = list(run_dir.glob("wandb/offline-run-*"))
    assert offline_runs, f"no offline W&B run under {run_dir}"
    assert next(offline_runs[0].glob("run-*.wandb")).stat().st_size > 0
    # W&B prints the run summary when the run finishes; the final metrics are in it.
    output = result.stdout + result.stderr
    assert "Run summary" in output and "final/test_accuracy" in output
    # The W&B run id is kept in the run directory, so a resumed run continues the same W&B run.
    assert (run_dir / "wandb_id.txt").read_text().strip() in offline_runs[0].name


def test_a_multirun_into_a_sweep_dir_of_unknown_runs_is_refused_before_writing(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "results.json").write_text('{"status": "completed"}')
    result = train(["-m", "method=dense", "seed=0,1", f"hydra.sweep.dir={sweep}", *TINY], tmp_path)
    assert result.returncode == 2
    assert "holds runs of an unknown sweep (sweep_identity.yaml is missing)" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in sweep.rglob("*")) == ["0", "results.json"]


@pytest.mark.slow
def test_a_multirun_into_another_sweeps_dir_is_refused_and_the_same_sweep_continues(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    first = train(["-m", "method=dense", "seed=0", f"hydra.sweep.dir={sweep}", *TINY], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {path: path.read_bytes() for path in sweep.rglob("*") if path.is_file()}
    other = train(["-m", "method=magnitude", "method.target_density=0.5", "seed=0", f"hydra.sweep.dir={sweep}", *TINY],
                  tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert "holds another sweep (it differs in: identity, overrides)" in other.stderr
    assert {path: path.read_bytes() for path in sweep.rglob("*") if path.is_file()} == before
    # The same sweep with more epochs continues its job from the checkpoint.
    again = train(["-m", "method=dense", "seed=0", f"hydra.sweep.dir={sweep}", *TINY[1:], "trainer.max_epochs=2"],
                  tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_results(sweep / "0")["epochs"] == 2
