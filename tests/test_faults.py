"""Faults: a crash, a signal, a diverging loss, a damaged checkpoint or a busy directory loses no work
and is never reported as a success."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import consparse.train as train_module
from consparse.callbacks import DivergenceGuard
from consparse.errors import ConfigError, RunDirError, TrainingDiverged
from consparse.interruption import RunInterrupted, SignalWatch
from consparse.report.results import read_results, validate_results
from consparse.run_dir import (
    LOCK_FILE,
    check_run_dir,
    last_checkpoint,
    lock_run_dir,
    previous_checkpoint,
    unlock_run_dir,
)
from consparse.train import run

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "train.py")
# Small and quick: a few batches per epoch, no compression curve, no export, a short latency.
QUICK = (
    "trainer.limit_train_batches=4",
    "evaluation.compression_grid=null",
    "evaluation.export=false",
    "evaluation.latency.min_run_time=0.01",
)
TINY_MODELS = {
    "dense": ("model.hidden=[16]",),
    # A radius the initial weights exceed: the start rescales them (a method metric the resume must keep).
    "sfw": ("model.hidden=[16]", "method.constraint.mode=radius", "method.constraint.value=5"),
    "l0": ("model.hidden=[16]",),
    "implicit_fw": ("model=implicit", "model.state_size=24", "model.kappa=0.5"),
}


class _CrashAtEpoch(pl.Callback):
    """An exception at the start of an epoch: after it, only what was on disk survives, as after kill -9."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _crashing_trainer(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    original = train_module._build_trainer

    def build(cfg, run_dir, timer):
        trainer = original(cfg, run_dir, timer)
        trainer.callbacks.append(_CrashAtEpoch(epoch))
        return trainer

    monkeypatch.setattr(train_module, "_build_trainer", build)


def _epoch_metrics(run_dir: Path) -> dict[tuple[int, str], str]:
    """Every per-epoch value of every metrics.csv of the run (all invocations), by (epoch, key)."""
    values: dict[tuple[int, str], str] = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                if not row.get("epoch"):
                    continue
                for key, value in row.items():
                    if value and key not in ("epoch", "step") and not key.startswith("final/"):
                        values[(int(row["epoch"]), key)] = value
    return values


def _without_timed_choices(method_metrics: dict) -> dict:
    """The method metrics less what finalize chooses by timing: a deployed implicit model's kernel
    format per product (dense or CSR), which two identical runs may choose differently."""
    deployed = method_metrics.get("deployed")
    if not isinstance(deployed, dict):
        return method_metrics
    return {**method_metrics, "deployed": {k: v for k, v in deployed.items() if k != "formats"}}


@pytest.mark.parametrize("method", sorted(TINY_MODELS))
def test_resume_after_a_crash_reproduces_the_run_exactly(
    method: str, make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = (f"method={method}", *TINY_MODELS[method], *QUICK, "trainer.max_epochs=3")
    whole = run(make_config(*overrides, output_dir=tmp_path / "whole"))

    crashed_dir = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        _crashing_trainer(patch, epoch=2)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run(make_config(*overrides, output_dir=crashed_dir))
    # The epoch-2 checkpoint was written at the start of epoch 2 (two epochs complete), the one
    # before it at the start of epoch 1.
    assert torch.load(last_checkpoint(crashed_dir), weights_only=True)["epoch"] == 2
    assert torch.load(previous_checkpoint(crashed_dir), weights_only=True)["epoch"] == 1
    resumed = run(make_config(*overrides, output_dir=crashed_dir))

    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert resumed["density"] == whole["density"]
    whole_method, resumed_method = _without_timed_choices(whole["method_metrics"]), _without_timed_choices(resumed["method_metrics"])
    differing = {key for key in whole_method if resumed_method.get(key) != whole_method[key]}
    assert not differing, {key: (whole_method[key], resumed_method.get(key)) for key in differing}
    whole_metrics, resumed_metrics = _epoch_metrics(tmp_path / "whole"), _epoch_metrics(crashed_dir)
    assert {epoch for epoch, _ in whole_metrics} == {0, 1, 2}
    assert resumed_metrics == whole_metrics


def test_resume_keeps_the_learning_rate_schedule(make_config, tmp_path: Path, monkeypatch) -> None:
    """A checkpoint written at an epoch's end (before the scheduler's step) would resume one step behind."""
    overrides = ("method=dense", "model.hidden=[8]", *QUICK, "trainer.max_epochs=3")
    with monkeypatch.context() as patch:
        _crashing_trainer(patch, epoch=1)
        with pytest.raises(RuntimeError):
            run(make_config(*overrides))
    checkpoint = torch.load(last_checkpoint(tmp_path / "run"), weights_only=True)
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 1


def test_max_epochs_zero_is_refused(make_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trainer.max_epochs: got 0"):
        run(make_config("method=dense", "trainer.max_epochs=0"))
    assert not last_checkpoint(tmp_path / "run").exists()


class _PoisonWeights(pl.Callback):
    """Turns a weight into NaN after the last training batch of ``epoch``: the next loss is not finite."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == trainer.num_training_batches - 1:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def test_non_finite_weights_are_never_checkpointed_and_the_run_is_diverged(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    original = train_module._build_trainer

    def build(cfg, run_dir, timer):
        trainer = original(cfg, run_dir, timer)
        trainer.callbacks.append(_PoisonWeights(1))
        return trainer

    monkeypatch.setattr(train_module, "_build_trainer", build)
    with pytest.raises(TrainingDiverged, match=r"became nan at step 8 \(epoch 2\); the learning rate is the likely cause"):
        run(make_config("method=dense", "model.hidden=[8]", *QUICK, "trainer.max_epochs=3"))
    # The start of epoch 2 found a NaN weight and wrote nothing: last.ckpt is still epoch 1's.
    checkpoint = torch.load(last_checkpoint(run_dir), weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
    results = read_results(run_dir)
    validate_results(results)
    assert results["status"] == "diverged" and "step 8" in results["error"]


@pytest.mark.parametrize("lag", [2, 10])
def test_a_deferred_loss_check_names_the_step_whose_loss_was_not_finite(
    make_config, lag: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the guard reads each step's flag a few steps later (no host sync per step): the run still
    stops, within the lag or at the epoch's end, naming the step whose loss was not finite."""
    original = train_module._build_trainer
    seen: list[int] = []

    class _Steps(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            seen.append(trainer.global_step)

    def build(cfg, run_dir, timer):
        trainer = original(cfg, run_dir, timer)
        next(c for c in trainer.callbacks if isinstance(c, DivergenceGuard)).lag = lag
        trainer.callbacks += [_PoisonWeights(1), _Steps()]
        return trainer

    monkeypatch.setattr(train_module, "_build_trainer", build)
    with pytest.raises(TrainingDiverged, match=r"became nan at step 8 \(epoch 2\)"):
        run(make_config("method=dense", "model.hidden=[8]", *QUICK, "trainer.max_epochs=3"))
    assert max(seen) == (10 if lag == 2 else 11), "stopped within the lag, or at the end of the epoch"


@pytest.mark.slow
def test_a_huge_learning_rate_is_reported_diverged_with_exit_status_3(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, TRAIN, "method=dense", "model.hidden=[8]", "method.optimizer.lr=1e30", *QUICK,
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "consparse: diverged: the training loss became" in result.stderr and "Traceback" not in result.stderr
    assert read_results(run_dir)["status"] == "diverged"


def test_a_diverged_job_of_a_sweep_is_recorded(make_config, monkeypatch) -> None:
    monkeypatch.setattr(train_module, "_is_multirun", lambda: True)
    results = run(make_config("method=dense", "model.hidden=[8]", *QUICK, "method.optimizer.lr=1e30"))
    assert results["status"] == "diverged"


@pytest.mark.parametrize("accuracy, classes, warned", [
    (0.1, 10, True), (0.158, 10, True), (0.3, 10, False), (0.55, 2, True), (0.7, 2, False), (0.1, 1000, True),
    (0.2, 1000, False), (float("nan"), 10, False),
])
def test_chance_level_warning(accuracy: float, classes: int, warned: bool) -> None:
    assert bool(train_module._chance_warning(accuracy, classes)) is warned


def test_a_run_collapsed_to_chance_is_completed_only_with_a_warning(make_config) -> None:
    # Frank-Wolfe with an absurd step lands on vertices that predict one class.
    results = run(make_config("method=sfw", "model.hidden=[16]", *QUICK, "method.optimizer.lr=1e6"))
    assert results["status"] == "completed" and results["test_accuracy"] < 0.2
    assert results["warnings"] and "close to chance level for 10 classes" in results["warnings"][0]


def test_completed_runs_above_chance_carry_no_warning(make_config) -> None:
    results = run(make_config("method=dense", *QUICK, "trainer.max_epochs=2"))
    assert results["test_accuracy"] > 0.5 and results["warnings"] == []


def test_a_corrupt_last_checkpoint_is_named_and_the_previous_offered(make_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = ("method=dense", "model.hidden=[8]", *QUICK)
    run(make_config(*overrides, "trainer.max_epochs=2"))
    last, previous = last_checkpoint(run_dir), previous_checkpoint(run_dir)
    assert previous.exists()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(RunDirError) as caught:
        run(make_config(*overrides, "trainer.max_epochs=3"))
    message = str(caught.value)
    assert str(last) in message and "truncated" in message and str(previous) in message
    # Following the advice resumes from the previous checkpoint.
    os.replace(last, last.with_name("last.ckpt.corrupt"))
    os.link(previous, last)
    assert run(make_config(*overrides, "trainer.max_epochs=3"))["epochs"] == 3


def test_a_corrupt_checkpoint_without_a_previous_one_says_start_again(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=dense")
    run_dir = tmp_path / "run"
    from consparse.run_dir import claim_run_dir

    claim_run_dir(run_dir, cfg)
    last_checkpoint(run_dir).parent.mkdir()
    last_checkpoint(run_dir).write_bytes(os.urandom(1000))
    with pytest.raises(RunDirError, match="no earlier whole checkpoint is kept: start again in a new hydra.run.dir"):
        check_run_dir(run_dir, cfg, resume=False)


def test_a_second_process_is_refused_while_the_first_holds_the_directory(make_config, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    holder_code = (
        "import sys, time; from consparse.run_dir import lock_run_dir; "
        "lock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(run_dir)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"in use by pid {holder.pid} on host "):
            run(make_config("method=dense"))
        assert not (run_dir / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead process's lock: the directory is free again.
    assert lock_run_dir(run_dir)
    unlock_run_dir(run_dir)
    assert not (run_dir / LOCK_FILE).exists()


def test_the_lock_is_released_after_a_run(make_config, tmp_path: Path) -> None:
    run(make_config("method=dense", "model.hidden=[8]", *QUICK))
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_signal_outside_training_interrupts_at_once() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    with SignalWatch() as watch, pytest.raises(RunInterrupted) as caught:
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(5)
    assert watch.received == signal.SIGUSR2 and caught.value.code == 128 + signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) == before, "the handlers in place before are put back"


def test_requeue_calls_scontrol_with_the_slurm_job(tmp_path: Path, monkeypatch) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_PROCID", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for signum, requeued in ((signal.SIGTERM, False), (signal.SIGUSR1, True)):
        watch = SignalWatch()
        watch.received = signum
        watch.requeue()
        assert calls.exists() is requeued
    assert calls.read_text().split() == ["requeue", "4242"]


def test_requeue_hands_the_signal_to_the_handler_before(monkeypatch) -> None:
    """Under submitit its own handler (checkpoint the submission, scontrol requeue, exit) does it."""
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with SignalWatch() as watch:
            watch.received = signal.SIGUSR2
        watch.requeue()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [signal.SIGUSR2]


def _train_process(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, TRAIN, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _wait_for_epochs(run_dir: Path, process: subprocess.Popen, epochs: int, timeout: float = 120) -> None:
    """Until ``epochs`` epochs are complete: their checkpoint rotation has made previous.ckpt."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if previous_checkpoint(run_dir).exists() and process.poll() is None:
            checkpoint = torch.load(last_checkpoint(run_dir), weights_only=True)
            if checkpoint["epoch"] >= epochs:
                return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of epoch {epochs} within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_checkpoints_the_step_records_interrupted_and_a_rerun_completes(
    signum: signal.Signals, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    # Long enough to be caught while training (1,293 digits at batch 8: 162 steps an epoch).
    args = ["method=dense", "model.hidden=[32]", "dataset.batch_size=8", "trainer.max_epochs=1000",
            "evaluation.compression_grid=null", "evaluation.latency.min_run_time=0.01", f"hydra.run.dir={run_dir}"]
    process = _train_process(args, tmp_path)
    _wait_for_epochs(run_dir, process, 2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "consparse: interrupted: stopped by" in stderr and "Traceback" not in stderr

    results = read_results(run_dir)
    validate_results(results)
    assert results["status"] == "interrupted" and signal.Signals(signum).name in results["error"]
    # last.ckpt is of the step the signal stopped (named in the error), newer than the epoch-start one.
    step = torch.load(last_checkpoint(run_dir), weights_only=True)["global_step"]
    assert f"at step {step} " in results["error"] and f"its checkpoint is {last_checkpoint(run_dir)}" in results["error"]
    assert step > torch.load(previous_checkpoint(run_dir), weights_only=True)["global_step"]

    rerun = _train_process([*args[:-2], "trainer.max_epochs=4", *args[-2:]], tmp_path)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    completed = read_results(run_dir)
    assert completed["status"] == "completed" and completed["epochs"] == 4
    assert read_results(run_dir / "results.previous-1.json")["status"] == "interrupted"


@pytest.mark.slow
def test_kill_9_then_resume_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    args = ["method=dense", "model.hidden=[16]", "dataset.batch_size=16", "trainer.max_epochs=6",
            "scheduler@method.scheduler=constant", "evaluation.compression_grid=null", "evaluation.export=false",
            "evaluation.latency.min_run_time=0.01"]
    whole = _train_process([*args, f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path)
    assert whole.wait(timeout=300) == 0, whole.communicate()[1][-3000:]
    killed_dir = tmp_path / "killed"
    killed = _train_process([*args, f"hydra.run.dir={killed_dir}"], tmp_path)
    _wait_for_epochs(killed_dir, killed, 2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resumed = _train_process([*args, f"hydra.run.dir={killed_dir}"], tmp_path)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-3000:]
    assert read_results(killed_dir)["test_accuracy"] == read_results(tmp_path / "whole")["test_accuracy"]
    # Every epoch value written by the killed and the resumed process is the uninterrupted run's.
    whole_metrics, killed_metrics = _epoch_metrics(tmp_path / "whole"), _epoch_metrics(killed_dir)
    assert {epoch for epoch, _ in killed_metrics} >= {2, 3, 4, 5}
    assert killed_metrics == {key: whole_metrics[key] for key in killed_metrics}


@pytest.mark.slow
def test_submitit_requeues_a_job_on_its_signal_and_the_requeued_job_completes(tmp_path: Path) -> None:
    """hydra-submitit-launcher's local executor runs the job as SLURM would; SIGUSR2 is submitit's signal."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    job_dir = sweep / "0"
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30", "method=dense",
            "model.hidden=[32]", "dataset.batch_size=8", "trainer.max_epochs=8", "evaluation.compression_grid=null",
            "evaluation.latency.min_run_time=0.01", f"hydra.sweep.dir={sweep}"]
    launcher = _train_process(args, tmp_path)
    try:
        _wait_for_epochs(job_dir, launcher, 2, timeout=300)
        owner = (job_dir / LOCK_FILE).read_text().split()
        os.kill(int(owner[owner.index("pid") + 1]), signal.SIGUSR2)
        _, stderr = launcher.communicate(timeout=600)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, stderr[-3000:]
    interrupted = read_results(job_dir / "results.previous-1.json")
    assert interrupted["status"] == "interrupted" and "SIGUSR2" in interrupted["error"]
    completed = read_results(job_dir)
    assert completed["status"] == "completed" and completed["epochs"] == 8
    logs = "".join(path.read_text() for path in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in logs


def test_a_second_sweep_started_in_a_busy_sweep_dir_is_refused(tmp_path: Path, capsys) -> None:
    from hydra import compose, initialize_config_dir

    from consparse.run_dir import SWEEP_IDENTITY_FILE, RunDirGuard

    sweep = tmp_path / "sweep"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = compose("config", overrides=["method=dense", f"hydra.sweep.dir={sweep}"], return_hydra_config=True)
    guard = RunDirGuard()
    guard.on_multirun_start(config)
    assert (sweep / LOCK_FILE).exists() and (sweep / SWEEP_IDENTITY_FILE).exists()
    holder_code = "import sys; from consparse.run_dir import lock_run_dir; lock_run_dir(sys.argv[1])"
    second = subprocess.run([sys.executable, "-c", holder_code, str(sweep)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=False)
    assert second.returncode != 0 and f"run directory {sweep} is in use by pid {os.getpid()}" in second.stderr
    guard.on_multirun_end(config)
    assert not (sweep / LOCK_FILE).exists()


def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(RunDirError, match="cannot create .*run.lock .*choose a writable hydra.run.dir"):
        lock_run_dir(tmp_path / "a-file" / "run")
