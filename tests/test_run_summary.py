"""The results table printed at the end of a run (consparse.summary): the density against its target."""

from __future__ import annotations

from pathlib import Path

import pytest

from consparse.summary import format_summary

RESULTS = {"method": "l0", "model": "text_mlp", "dataset": "newsgroups20", "seed": 0, "test_accuracy": 0.05,
           "params": 10, "dense_params": 100, "macs": 10, "dense_macs": 100, "latency_ms": 0.1,
           "dense_latency_ms": 0.2, "latency": {"batch_size": 1, "threads": 1}, "epochs": 3, "train_seconds": 20.0}


def density_line(density: float, target: object) -> str:
    lines = format_summary({**RESULTS, "density": density, "target_density": target}, Path("run")).splitlines()
    return " ".join(next(line for line in lines if line.strip().startswith("density")).split())


@pytest.mark.parametrize(
    ("density", "target", "says"),
    [
        (0.0498, 0.05, "density 0.0498 (target 0.05)"),
        (0.0524, 0.05, "density 0.0524 (target 0.05)"),  # within the 5 % tolerance
        (0.0530, 0.05, "density 0.0530 (target 0.05): above it by more than 5 %"),
        (0.0260, 0.05, "density 0.0260 (target 0.05)"),
        (0.0021, 0.05, "density 0.0021 (target 0.05): far under it, most of the budget unused"),
        (0.3000, [0.5, 0.1], "density 0.3000 (target [0.5, 0.1])"),  # layer-wise: judged per layer elsewhere
        (1.0000, None, "density 1.0000"),
    ],
)
def test_the_density_line_says_where_the_run_landed(density: float, target: object, says: str) -> None:
    line = density_line(density, target)
    assert line.startswith(says)
    if "under" not in says and "above" not in says:
        assert line == says
