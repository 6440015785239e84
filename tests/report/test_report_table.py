"""The run table: results.csv rows, variant labels, the table's model (consparse.report.table)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from consparse.report import collect_results, summarise, write_report
from consparse.report.table import parse_overrides, runs_table, variant_labels


def test_results_csv_has_one_flat_row_per_run(sweep: Path) -> None:
    paths = write_report(sweep)
    assert paths["results_csv"] == sweep / "results.csv"
    with open(paths["results_csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15
    required = [
        "method", "model", "dataset", "seed", "status", "target_density", "test_accuracy", "density",
        "params", "dense_params", "macs", "dense_macs", "latency_ms", "dense_latency_ms",
        "train_seconds", "epochs", "run_dir", "error", "overrides",
    ]  # fmt: skip
    assert set(required) <= set(rows[0])
    assert "method_metrics.fw_gap" in rows[0] and "method_metrics.expected_density" in rows[0]
    assert not any(name.startswith(("method_metrics.multipliers", "per_layer_density")) for name in rows[0])
    sfw = next(r for r in rows if r["method"] == "sfw" and r["seed"] == "1" and r["target_density"] == "0.1")
    assert float(sfw["method_metrics.fw_gap"]) == pytest.approx(0.013)
    assert sfw["params"] == "27030" and sfw["dense_macs"] == "266200"
    penalty = next(r for r in rows if r["method"] == "l0_penalty")
    assert penalty["run_dir"] == "penalty/0"
    assert penalty["variant"] == "method.penalty=0.01"
    assert penalty["overrides"] == "method=l0_penalty method.penalty=0.01 seed=0 trainer.max_epochs=3"
    assert penalty["target_density"] == ""
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["run_dir"] == "13" and "loss is NaN" in failed["error"] and "Traceback" in failed["error"]
    assert failed["test_accuracy"] == ""


def test_explicit_group_by_replaces_detected_variants(sweep: Path) -> None:
    summary = summarise(collect_results(sweep), group_by=["trainer.max_epochs"])
    assert set(summary["variant"]) == {"trainer.max_epochs=3"}


def run(method: str, overrides: list[str], *, variant: str | None = None, status: str = "completed",
        model: str = "mlp", setting: dict | None = None) -> dict:
    return {"method": method, "model": model, "dataset": "mnist", "seed": 0, "status": status,
            "setting": setting or {"name": None, "model": None}, "variant": variant or method, "overrides": overrides}


def test_variants_come_from_the_overrides_that_differ_within_an_arm() -> None:
    compare = {"name": "compare_mnist_mlp", "model": "mlp"}
    rows = [
        run("l0_penalty", ["method=l0_penalty", "method.penalty=0.1", "seed=0"], setting=compare),
        run("l0_penalty", ["method=l0_penalty", "method.penalty=1.0", "seed=1"], setting=compare),
        # A per-method setting, the same in every run of its arm: no variant.
        run("magnitude", ["method=magnitude", "method.finetune_epochs=2", "seed=0", "variant=magnitude"], setting=compare),
        run("magnitude", ["method=magnitude", "method.finetune_epochs=2", "seed=1", "variant=magnitude"], setting=compare),
        # A failed run is labelled with the keys the completed ones chose, so it counts beside them.
        run("l0_penalty", ["method=l0_penalty", "method.penalty=1.0", "seed=2", "trainer.max_epochs=9"],
            status="failed", setting=compare),
        # Two blocks of one method are two arms; the block's name leads the label.
        run("sfw", ["method=sfw", "+method.constraint=l2"], variant="sfw_l2", setting=compare),
    ]  # fmt: skip
    assert variant_labels(rows) == ["method.penalty=0.1", "method.penalty=1.0", "", "", "method.penalty=1.0", "sfw_l2"]
    assert variant_labels(rows, group_by=["method.constraint"]) == ["", "", "", "", "", "sfw_l2, method.constraint=l2"]
    # Outside a comparison all runs form one arm: an override only some runs have tells them apart.
    plain = [{**row, "setting": {"name": None, "model": None}} for row in rows[:4]]
    assert variant_labels(plain) == ["method.penalty=0.1", "method.penalty=1.0", "method.finetune_epochs=2",
                                     "method.finetune_epochs=2"]  # fmt: skip


def test_a_run_of_another_model_joins_its_settings_table() -> None:
    setting = {"name": "compare_mnist_mlp", "model": "mlp"}
    rows = [
        run("implicit_fw", ["method=implicit_fw", "model=implicit", "seed=0"], model="implicit", setting=setting),
        run("l0", ["method=l0", "seed=0"], setting=setting),
    ]
    table = runs_table(rows)
    assert list(table["model"]) == ["mlp", "mlp"] and list(table["run_model"]) == ["implicit", "mlp"]
    assert list(table["variant"]) == ["model=implicit", ""]


def test_parse_overrides_keeps_values_as_written() -> None:
    assert parse_overrides(["a.b=0.1", "+c=[1, 2]", "++d=x=y", "~e", "~f=3", "hydra/launcher=basic"]) == {
        "a.b": "0.1", "c": "[1, 2]", "d": "x=y", "e": "~", "f": "~", "hydra/launcher": "basic",
    }
