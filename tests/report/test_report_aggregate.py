"""Aggregation of a fake sweep: results.csv, the summary, results.md and the plots."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import pandas as pd
import pytest
import yaml

from consparse.errors import ConfigError
from consparse.report import collect_results, summarise, write_report
from consparse.report.aggregate import NoResultsError, format_count, significant_decimals

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def markdown_table(markdown: str, heading: str) -> list[dict[str, str]]:
    """The first table after ``heading`` as one dict per row, keyed by the header cells."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif table:
            break
    header, _, *rows = [[c.replace("\\|", "|") for c in row] for row in table] if table else [[], []]
    return [dict(zip(header, row)) for row in rows]


def row_for(rows: list[dict[str, str]], method: str, target: str) -> dict[str, str]:
    matches = [r for r in rows if r["method"] == method and r["target"] == target]
    assert len(matches) == 1, (method, target, rows)
    return matches[0]


def mean_std(a: float, b: float) -> tuple[float, float]:
    """Mean and sample std of two values, by hand."""
    return (a + b) / 2, abs(a - b) / math.sqrt(2)


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the signature
    assert width > 300 and height > 300


def test_collect_results_reads_every_run(sweep: Path) -> None:
    rows = collect_results(sweep)
    assert len(rows) == 15
    assert all(Path(row["run_dir"]).is_absolute() and Path(row["run_dir"]).is_dir() for row in rows)
    penalty = next(row for row in rows if row["method"] == "l0_penalty")
    assert "method.penalty=0.01" in penalty["overrides"]
    assert penalty["target_density"] is None
    failed = [row for row in rows if row["status"] != "completed"]
    assert [(r["method"], r["seed"], r["status"]) for r in failed] == [("l0", 2, "failed")]
    # Filled from the job's overrides: the failed results.json does not carry its target.
    assert failed[0]["target_density"] == 0.05


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


def test_summary_groups_seeds_and_marks_the_best(sweep: Path) -> None:
    summary = summarise(collect_results(sweep))
    assert len(summary) == 8
    by_key = {(r.method, None if pd.isna(r.target_density) else r.target_density): r for r in summary.itertuples()}
    sfw = by_key[("sfw", 0.1)]
    mean, std = mean_std(0.9750, 0.9730)
    assert sfw.test_accuracy_mean == pytest.approx(mean) and sfw.test_accuracy_std == pytest.approx(std)
    assert sfw.n_seeds == 2 and sfw.seeds == "0, 1"
    l0 = by_key[("l0", 0.1)]
    assert l0.density_mean == pytest.approx(0.118) and l0.density_vs_target == pytest.approx(0.18)
    assert not l0.meets_target and not l0.best  # most accurate at 0.1, but 18 % over the target
    assert by_key[("l0", 0.05)].n_failed == 1
    best = sorted((r.method, r.target_density) for r in summary.itertuples() if r.best)
    assert best == [("l0", 0.05), ("sfw", 0.1)]  # and nobody at 0.02
    penalty = by_key[("l0_penalty", None)]
    assert penalty.variant == "method.penalty=0.01" and pd.isna(penalty.meets_target)
    assert math.isnan(penalty.test_accuracy_std)  # one seed: no std rather than a measured 0
    # trainer.max_epochs=3 is the same in every run, so it does not make a variant.
    assert set(summary["variant"]) == {"", "method.penalty=0.01"}


def test_tolerance_decides_who_meets_a_target(sweep: Path) -> None:
    summary = summarise(collect_results(sweep), tolerance=0.2)
    best = sorted((r.method, r.target_density) for r in summary.itertuples() if r.best)
    assert best == [("l0", 0.05), ("l0", 0.1)]
    with pytest.raises(ConfigError, match="report.tolerance"):
        summarise(collect_results(sweep), tolerance=-0.1)


def test_explicit_group_by_replaces_detected_variants(sweep: Path) -> None:
    summary = summarise(collect_results(sweep), group_by=["trainer.max_epochs"])
    assert set(summary["variant"]) == {"trainer.max_epochs=3"}


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


def test_plots_are_png_files(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    paths = write_report(sweep, out)
    assert paths["pareto"] == out / "pareto.png"
    assert paths["compression_curves"] == out / "compression_curves.png"
    for name in ("pareto", "compression_curves"):
        assert_png(paths[name])
    assert not (sweep / "results.md").exists()  # everything went to out
    curves = pd.read_csv(paths["curves_csv"])
    assert set(curves["method"]) == {"magnitude", "sfw"} and set(curves["n_seeds"]) == {2}


def test_unreadable_and_missing_results_are_failed_rows(sweep: Path) -> None:
    broken = sweep / "20"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["method=sfw", "method.target_density=0.1", "seed=5"]))
    (broken / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"seed": 5, "method": {"name": "sfw", "target_density": 0.1}, "model": {"name": "mlp"}, "dataset": {"name": "mnist"}})
    )
    (broken / "results.json").write_text('{"method": "sfw", "status": ')
    crashed = sweep / "21"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["method=magnitude", "seed=3"]))

    paths = write_report(sweep)
    markdown = paths["markdown"].read_text()
    failed = {row["run dir"]: row for row in markdown_table(markdown, "## Failed or missing runs (3)")}
    assert failed["20"]["status"] == "failed" and failed["20"]["error (first line)"].startswith("could not read results.json:")
    assert (failed["20"]["method"], failed["20"]["seed"], failed["20"]["target"]) == ("sfw", "5", "0.100")
    assert failed["21"]["status"] == "missing" and failed["21"]["method"] == "magnitude"
    assert failed["21"]["model"] == "?" and "no results.json" in failed["21"]["error (first line)"]
    rows = markdown_table(markdown, "## mnist / mlp")
    assert row_for(rows, "sfw", "0.100")["n"] == "2 (+1 failed)"


def test_mixed_datasets_and_missing_optional_keys(sweep: Path) -> None:
    # Written by hand: write_results would refuse a completed run without MACs, latency, ...
    (sweep / "30").mkdir()
    (sweep / "30" / "results.json").write_text(
        json.dumps({"method": "dense", "model": "mlp", "dataset": "fashion_mnist", "seed": 0, "status": "completed",
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


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NoResultsError, match=f"no results.json found below {tmp_path}"):
        write_report(tmp_path)
    with pytest.raises(NoResultsError, match="not a directory"):
        collect_results(tmp_path / "absent")


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (950, "950"), (999.96, "1.0k"), (266_610, "266.6k"), (999_960, "1.0M"), (1_234_567, "1.2M"), (2.5e9, "2.5G"), (math.nan, "—")],
)
def test_format_count(value: float, text: str) -> None:
    assert format_count(value) == text


@pytest.mark.parametrize(("value", "decimals"), [(0.0823, 4), (0.213, 3), (12.3, 1), (123.0, 0), (4567.0, 0)])
def test_significant_decimals(value: float, decimals: int) -> None:
    assert significant_decimals(value) == decimals


def test_dense_reference_per_method_when_references_differ(sweep: Path) -> None:
    # implicit_fw is measured against a dense implicit model, not against the mlp.
    (sweep / "40").mkdir()
    (sweep / "40" / "results.json").write_text(
        json.dumps({"method": "implicit_fw", "model": "mlp", "dataset": "mnist", "seed": 0, "status": "completed",
                    "test_accuracy": 0.879, "density": 0.052, "dense_params": 1_200_000, "dense_macs": 1_100_000,
                    "dense_latency_ms": 1.5, "target_density": None})
    )  # fmt: skip
    markdown = write_report(sweep)["markdown"].read_text()
    assert (
        "Dense reference: implicit_fw: 1.2M params, 1.1M MACs, latency 1.50 ms (mean over runs); "
        "l0: 266.6k params, 266.2k MACs, latency 0.210 ms (mean over runs); "
    ) in markdown
