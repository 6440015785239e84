"""benchmarks/gpu_check.py at its tiny CPU size: every item measured, the JSON complete, failures recorded."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_the_tiny_check_measures_every_item(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--tiny", "--skip-tests"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["mode"].startswith("tiny") and record["environment"]["torch"]
    table = record[record["sizes"]["model"]]
    for name in ("bare", "dense", "sfw", "l0", "magnitude"):
        row = table[name]
        assert "error" not in row, row.get("traceback")
        assert row["seconds_per_epoch"] > 0 and row["images_per_second"] > 0 and row["model_flops_per_second"] > 0
        assert row["ratio_to_bare"] > 0
    assert table["dense"]["ratio_to_dense_step"] == 1.0
    assert table["dense_compiled"] == {"skipped": "tiny size"}
    assert record["flops"][record["sizes"]["model"]]["forward_flops_per_image"] > 0
    for row in record["wrn28_10"].values():
        assert "error" not in row, row.get("traceback")
        assert row["seconds_per_step"] > 0 and row["hours_for_200_epochs"] > 0
    lasso = record["implicit_lasso_rows"]["active_set"]
    assert lasso["device"]["rows_per_second"] > 0 and lasso["cpu_1_thread"]["rows_per_second"] > 0
    assert lasso["device"]["rows_fallback"] == 0
    assert set(record["goal_results"]) == {"dense_epoch_seconds", "platform_over_bare", "sfw_over_dense_step",
                                           "l0_over_dense_step", "device_loader_over_model",
                                           "nm_speedup mlp 64-64-32"}
    nm_row = record["nm_semi_structured"]["batch_256_float16"]["stacks"]["mlp 64-64-32"]
    assert nm_row["gpu"]["reason"] == "not measured: no CUDA device"
    assert nm_row["cpu_export_check"]["layers_two_four"] == nm_row["cpu_export_check"]["layers"] == 2
    loaders = record["data_loader"]["cifar"]
    assert "error" not in loaders, loaders.get("traceback")
    assert loaders["device_loader_to_model"] > 0 and loaders["cpu_loader_to_model"] > 0
    assert "sfw" in done.stdout and "goal platform_over_bare" in done.stdout


def test_a_failing_item_is_recorded_and_the_check_goes_on(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    report = module.Report(tmp_path / "gpu_check.json", {"mode": "test"})

    def broken() -> dict:
        raise RuntimeError("out of memory")

    assert report.item("table", "broken", broken) is None
    assert report.item("table", "fine", lambda: {"seconds": 1.0})["seconds"] == 1.0
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["table"]["broken"]["error"] == "RuntimeError: out of memory"
    assert record["table"]["fine"]["seconds"] == 1.0
