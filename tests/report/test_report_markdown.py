"""results.md: counts, legend, tables, dense reference, failures (consparse.report.markdown)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from consparse.report import write_report

from .conftest import assert_png, markdown_table, row_for


def mean_std(a: float, b: float) -> tuple[float, float]:
    """Mean and sample std of two values, by hand."""
    return (a + b) / 2, abs(a - b) / math.sqrt(2)


def test_markdown_report(sweep: Path) -> None:
    markdown = write_report(sweep)["markdown"].read_text()
    assert markdown.startswith("# consparse results: sweep\n")
    assert "15 runs: 14 completed, 1 failed or missing" in markdown
    assert "- **★**: best at its target" in markdown and "sample std (ddof 1)" in markdown
    assert "Dense reference: 266.6k params, 266.2k MACs, latency 0.210 ms (mean over runs)." in markdown
    rows = markdown_table(markdown, "## mnist / mlp")
    assert len(rows) == 8
    assert list(rows[0]) == [
        "method", "variant", "target", "density", "vs target", "test acc (%)", "params", "MACs",
        "latency (ms)", "train (s)", "n", "best",
    ]  # fmt: skip

    sfw = row_for(rows, "sfw", "0.100")
    mean, std = mean_std(97.50, 97.30)
    assert sfw["test acc (%)"] == f"{mean:.2f} ± {std:.2f}" == "97.40 ± 0.14"
    assert sfw["density"] == "0.100 ± 0.000" and sfw["vs target"] == "+0.0 %"
    assert sfw["params"] == "27.0k ± 0" and sfw["MACs"] == "26.6k ± 0"
    mean, std = mean_std(0.215, 0.211)
    assert sfw["latency (ms)"] == f"{mean:.3f} ± {std:.3f}" == "0.213 ± 0.003"
    assert sfw["train (s)"] == "56.0 ± 1.4" and sfw["n"] == "2" and sfw["best"] == "★"

    magnitude = row_for(rows, "magnitude", "0.100")
    mean, std = mean_std(97.12, 96.88)
    assert magnitude["test acc (%)"] == f"{mean:.2f} ± {std:.2f}" == "97.00 ± 0.17"
    assert magnitude["best"] == ""

    l0 = row_for(rows, "l0", "0.100")
    mean, std = mean_std(0.115, 0.121)
    assert l0["density"] == f"{mean:.3f} ± {std:.3f}" == "0.118 ± 0.004"
    assert l0["vs target"] == "+18.0 % ⚠" and l0["best"] == ""
    assert l0["latency (ms)"] == "0.0820 ± 0.0014"  # three significant digits

    l0_05 = row_for(rows, "l0", "0.050")
    assert l0_05["n"] == "2 (+1 failed)" and l0_05["best"] == "★"
    assert l0_05["vs target"] == "+1.6 %" and l0_05["test acc (%)"] == "96.50 ± 0.14"

    assert row_for(rows, "l0", "0.020")["vs target"] == "+75.0 % ⚠"
    assert "No method meets target 0.020" in markdown

    penalty = row_for(rows, "l0_penalty", "—")
    assert penalty["variant"] == "method.penalty=0.01"
    assert penalty["test acc (%)"] == "97.00" and penalty["density"] == "0.083"  # one seed: no ±
    assert penalty["vs target"] == "" and penalty["n"] == "1"
    assert [r["best"] for r in rows].count("★") == 2

    assert "![mnist / mlp: test accuracy against density, params, MACs and latency](pareto.png)" in markdown
    assert "](compression_curves.png)" in markdown
    failed = markdown_table(markdown, "## Failed or missing runs (1)")
    assert failed == [
        {
            "run dir": "13",
            "status": "failed",
            "method": "l0",
            "model": "mlp",
            "dataset": "mnist",
            "seed": "2",
            "target": "0.050",
            "error (first line)": "RuntimeError: loss is NaN at step 120",
        }
    ]


def test_mixed_datasets_and_missing_optional_keys(sweep: Path) -> None:
    # Written by hand: write_results would refuse a completed run without MACs, latency, ...
    (sweep / "30").mkdir()
    (sweep / "30" / "results.json").write_text(
        json.dumps({"schema_version": 2, "setting": {"name": None, "model": None}, "variant": "dense",
                    "method": "dense", "model": "mlp", "dataset": "fashion_mnist", "seed": 0, "status": "completed",
                    "test_accuracy": 0.885, "density": 1.0, "params": 266_610, "target_density": None})
    )  # fmt: skip
    paths = write_report(sweep)
    markdown = paths["markdown"].read_text()
    assert "## fashion_mnist / mlp" in markdown and "## mnist / mlp" in markdown
    dense = markdown_table(markdown, "## fashion_mnist / mlp")
    assert dense == [
        {"method": "dense", "target": "—", "density": "1.000", "vs target": "", "test acc (%)": "88.50",
         "params": "266.6k", "MACs": "—", "latency (ms)": "—", "train (s)": "—", "n": "1", "best": ""}
    ]  # fmt: skip
    assert "pareto" not in paths and "compression_curves_fashion_mnist_mlp" not in paths
    for name in ("pareto_mnist_mlp", "pareto_fashion_mnist_mlp", "compression_curves_mnist_mlp"):
        assert_png(paths[name])


def test_dense_reference_per_method_when_references_differ(sweep: Path) -> None:
    # implicit_fw is measured against a dense implicit model, not against the mlp.
    (sweep / "40").mkdir()
    (sweep / "40" / "results.json").write_text(
        json.dumps({"schema_version": 2, "setting": {"name": None, "model": None}, "variant": "implicit_fw",
                    "method": "implicit_fw", "model": "mlp", "dataset": "mnist", "seed": 0, "status": "completed",
                    "test_accuracy": 0.879, "density": 0.052, "dense_params": 1_200_000, "dense_macs": 1_100_000,
                    "dense_latency_ms": 1.5, "target_density": None})
    )  # fmt: skip
    markdown = write_report(sweep)["markdown"].read_text()
    assert (
        "Dense reference: implicit_fw: 1.2M params, 1.1M MACs, latency 1.50 ms (mean over runs); "
        "l0: 266.6k params, 266.2k MACs, latency 0.210 ms (mean over runs); "
    ) in markdown


def test_val_accuracy_gets_a_column_where_runs_measured_it(sweep: Path) -> None:
    from consparse.report.results import read_results, write_results

    for path in sweep.rglob("results.json"):
        results = read_results(path)
        if results["status"] == "completed" and results["method"] == "sfw":
            results["val_accuracy"] = results["test_accuracy"] - 0.01 * (1 + results["seed"])
            write_results(path.parent, results)
    paths = write_report(sweep)
    rows = markdown_table(paths["markdown"].read_text(), "## mnist / mlp")
    assert list(rows[0])[5:7] == ["test acc (%)", "val acc (%)"]
    mean, std = mean_std(97.50 - 1, 97.30 - 2)
    assert row_for(rows, "sfw", "0.100")["val acc (%)"] == f"{mean:.2f} ± {std:.2f}"
    assert row_for(rows, "l0", "0.100")["val acc (%)"] == "—"  # written before the key existed
    table = pd.read_csv(paths["results_csv"])
    assert list(table.columns[8:10]) == ["test_accuracy", "val_accuracy"]
