"""benchmarks/deployed_val_accuracy.py: the validation accuracy of a finished run's export."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from consparse.train import run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deployed_val_accuracy.py"
NO_CURVE = tuple(f"evaluation.compression_grid.{kind}=[]" for kind in ("unstructured", "filter", "lowrank"))


def script():
    spec = importlib.util.spec_from_file_location("deployed_val_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def last_logged_val_accuracy(run_dir: Path) -> float:
    rows = [row for path in run_dir.glob("csv/*/metrics.csv") for row in csv.DictReader(path.open())]
    return float([row["val/acc"] for row in rows if row.get("val/acc")][-1])


def test_a_dense_export_scores_what_training_logged_and_a_pruned_one_differs(make_config, tmp_path: Path):
    module = script()
    accuracies = {}
    for method in ("dense", "magnitude"):
        run_dir = tmp_path / method
        overrides = [f"method={method}", *NO_CURVE, "logger=csv", "trainer.max_epochs=2"]
        if method == "magnitude":
            # Pruned to 5 % after training with no fine-tuning: the export is not the model validated.
            overrides += ["method.target_density=0.05", "method.finetune_epochs=0"]
        cfg = make_config(*overrides, output_dir=run_dir)
        run(cfg)
        (run_dir / ".hydra").mkdir()
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        assert module.main([str(run_dir)]) == 0
        accuracies[method] = float((run_dir / module.RESULT_FILE).read_text())
        assert 0.0 <= accuracies[method] <= 1.0
        if method == "dense":
            # Dense deploys the trained model unchanged, on the same validation split.
            assert accuracies[method] == pytest.approx(last_logged_val_accuracy(run_dir), abs=1e-6)
        else:
            assert accuracies[method] != pytest.approx(last_logged_val_accuracy(run_dir), abs=1e-6)
