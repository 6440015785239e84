"""method=implicit_lasso on model=distilbert: fine-tune, convert the head by state matching on the
encoder's features, write results.json (a tiny random DistilBERT and a local tokenizer: no download)."""

from __future__ import annotations

from pathlib import Path

from tests.text_fixtures import tiny_distilbert_overrides, write_tokenizer

from consparse.report.results import read_results
from consparse.train import run


def test_a_tiny_distilbert_is_fine_tuned_and_its_head_state_matched(make_config, tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    overrides = [
        "method=implicit_lasso", *tiny_distilbert_overrides(tmp_path / "data", tokenizer),
        "method.optimizer.lr=1e-3", "method.kappa=0.3", "method.kappa_scale=absolute", "method.data_fraction=0.5",
        "evaluation.export=false", "evaluation.compression_grid=null", "seed=0",
    ]
    cfg = make_config(*overrides)
    results = run(cfg)
    on_disk = read_results(tmp_path / "run")
    assert on_disk["status"] == "completed" and results["model"] == "distilbert"
    metrics = on_disk["method_metrics"]
    assert metrics["formulation"] == "head" and metrics["kappa_scale"] == "absolute"
    # The head's 16 hidden units are the rows; its refit keeps every row in the radius (well-posed).
    assert metrics["rows"] == 16 and metrics["samples"] == 24
    assert metrics["max_norm_over_radius"] <= 1 + 1e-9 and metrics["well_posedness"] <= 0.3 * (1 + 1e-9)
    assert 0.0 <= metrics["row_sparsity"] < 1.0 and metrics["conversion_error"] < 1e-4
    # The deployed head solved its fixed point on every test and latency forward.
    assert metrics["fixed_point"]["converged"] and metrics["fixed_point"]["samples"] > 0
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0 and 0.0 < on_disk["density"] <= 1.0
