"""``python eval.py run=<run dir>``: a finished run's export measured again, into a separate file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from consparse.errors import ConfigError
from consparse.evaluate_run import EVAL_RESULTS_FILE, evaluate, main
from consparse.report.results import read_results, validate_results
from consparse.train import run

# `evaluation.compression_grid={}` would merge into the grid, not replace it: each kind is emptied.
NO_CURVE = tuple(f"evaluation.compression_grid.{kind}=[]" for kind in ("unstructured", "filter", "lowrank"))

REPO = Path(__file__).resolve().parents[1]


def _finished_run(make_config, run_dir: Path, *overrides: str) -> dict:
    """A trained run with Hydra's record of its config, as ``python train.py`` leaves it."""
    cfg = make_config(*overrides, output_dir=run_dir)
    results = run(cfg)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return results


@pytest.mark.parametrize("method", ["dense", "l0"])
def test_evaluation_reproduces_the_training_measurement(make_config, tmp_path: Path, method: str) -> None:
    run_dir = tmp_path / "run"
    trained = _finished_run(make_config, run_dir, f"method={method}", "method.target_density=0.3")
    before = (run_dir / "results.json").read_bytes()
    returned, written = evaluate(run_dir / "export", [])
    assert written == run_dir / EVAL_RESULTS_FILE
    assert returned["test_accuracy"] == json.loads(written.read_text())["test_accuracy"]
    on_disk = json.loads(written.read_text())
    validate_results(on_disk)
    for key in ("test_accuracy", "density", "params", "dense_params", "macs", "dense_macs"):
        assert on_disk[key] == pytest.approx(trained[key]), key
    assert on_disk["evaluation_of"]["training_test_accuracy"] == trained["test_accuracy"]
    assert on_disk["compression_curve"][0]["density"] == pytest.approx(trained["density"]), "the curve starts at the export"
    assert (run_dir / "results.json").read_bytes() == before, "the training run's results are never rewritten"


def test_overrides_change_the_evaluation_and_earlier_files_are_kept(make_config, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    _finished_run(make_config, run_dir, "method=dense", *NO_CURVE)
    assert main([f"run={run_dir}"]) == 0
    assert main([f"run={run_dir}", "evaluation.compression_grid.unstructured=[0.5,0.9]",
                 "evaluation.latency.threads=2"]) == 0
    assert "consparse evaluation" in capsys.readouterr().out
    latest = read_results(run_dir / EVAL_RESULTS_FILE)
    assert [point["amount"] for point in latest["compression_curve"]] == [0.5, 0.9]
    assert latest["latency"]["threads"] == 2
    assert read_results(run_dir / "eval_results.previous-1.json")["compression_curve"] == []
    elsewhere = tmp_path / "elsewhere" / "eval.json"
    old_umask = os.umask(0o022)
    try:
        assert main([f"run={run_dir}", f"output={elsewhere}"]) == 0 and elsewhere.exists()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o644, "readable by colleagues, like results.json"


@pytest.mark.parametrize(
    "arguments,key",
    [
        ([], "run"),
        (["run"], "run"),
        (["run=/no/such/run"], "run"),
        (["RUN", "evaluation.no_such_key=1"], "evaluation.no_such_key"),
        (["RUN", "output=RUN/results.json"], "output"),
    ],
)
def test_bad_arguments_are_one_line_errors(make_config, tmp_path: Path, capsys, arguments: list[str], key: str) -> None:
    run_dir = tmp_path / "run"
    if any("RUN" in argument for argument in arguments):
        _finished_run(make_config, run_dir, "method=dense", *NO_CURVE)
        arguments = [argument.replace("RUN", f"run={run_dir}" if argument == "RUN" else str(run_dir)) for argument in arguments]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"consparse: error: {key}:") and error.count("\n") == 1


def test_a_run_without_hydras_record_says_what_is_missing(make_config, tmp_path: Path) -> None:
    run(make_config("method=dense", *NO_CURVE))
    with pytest.raises(ConfigError, match=r"\.hydra/config\.yaml is missing"):
        evaluate(tmp_path / "run", [])


def test_help_names_the_arguments(capsys) -> None:
    assert main(["--help"]) == 0
    assert "run=<run dir>" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_py_after_train_py(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "run"
    trained = subprocess.run([sys.executable, str(REPO / "train.py"), "debug=fast", "method=sfw", f"hydra.run.dir={run_dir}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = subprocess.run([sys.executable, str(REPO / "eval.py"), f"run={run_dir}", "evaluation.latency.rounds=1"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    results = read_results(run_dir / EVAL_RESULTS_FILE)
    assert results["method"] == "sfw" and results["test_accuracy"] == pytest.approx(read_results(run_dir)["test_accuracy"])
    assert str(run_dir / EVAL_RESULTS_FILE) in evaluated.stdout
