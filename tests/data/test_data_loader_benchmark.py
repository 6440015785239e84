"""benchmarks/data_loader.py at a tiny size, so that the GPU check's import of it cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "data_loader.py"


@pytest.mark.slow
def test_measure_loader_reports_rates_and_ratios():
    spec = importlib.util.spec_from_file_location("data_loader_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.measure_loader(device="cpu", batch_size=8, num_images=64, model_steps=1, cpu_loader_batches=4)
    assert result["device"] == "cpu" and result["batch_size"] == 8
    for name in ("cpu_loader", "device_loader", "model"):
        assert result[f"{name}_images_per_s"] > 0
    assert result["device_loader_to_model"] == result["device_loader_images_per_s"] / result["model_images_per_s"]
