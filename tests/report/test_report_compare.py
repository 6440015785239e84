"""The side-by-side part of the report (consparse.report.compare) on fake sweeps with known numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from consparse.report import write_report
from consparse.report.compare import CURVE_VARIANT

from .conftest import (
    assert_png,
    build_compare_sweep,
    build_sweep,
    markdown_table,
    row_for,
    section,
    write_job,
)


# Each report is written once for the module: drawing the plots is what takes the time.
@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_report(build_sweep(tmp_path_factory.mktemp("plain") / "sweep"))


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_report(build_compare_sweep(build_sweep(tmp_path_factory.mktemp("compared") / "sweep")))


def test_side_by_side_matrices(plain: dict[str, Path]) -> None:
    markdown = plain["markdown"].read_text()
    accuracy = {
        row["method"]: row for row in markdown_table(markdown, "### Side by side at matched target densities")
    }
    assert list(accuracy["sfw"]) == ["method", "0.1", "0.05", "0.02"]
    assert accuracy["sfw"] == {"method": "sfw", "0.1": "97.40 ± 0.14 ★", "0.05": "96.30 ± 0.14", "0.02": "—"}
    # l0 is the most accurate at 0.1 but keeps 0.118 of the weights: flagged, with its density, never best.
    assert accuracy["l0"]["0.1"] == "97.80 ± 0.14 ⚠ (0.118)"
    assert accuracy["l0"]["0.05"] == "96.50 ± 0.14 ★" and accuracy["l0"]["0.02"] == "95.00 ⚠ (0.035)"
    assert accuracy["magnitude"]["0.05"] == "94.00 ± 0.28"
    assert "l0_penalty (method.penalty=0.01)" not in accuracy  # no target: not a column of its own

    lines = markdown.splitlines()
    density_heading = lines.index("Achieved density (fraction of weights kept) by target density:")
    density = {row["method"]: row for row in markdown_table(markdown, lines[density_heading])}
    assert density["l0"]["0.1"] == "0.118 ± 0.004 ⚠" and density["sfw"]["0.05"] == "0.050 ± 0.000"


def test_shortfalls_say_who_falls_short_and_by_how_much(plain: dict[str, Path]) -> None:
    markdown = plain["markdown"].read_text()
    shortfalls = section(markdown, "#### Where methods fall short")
    assert shortfalls == [
        # spread = 0.14 + 0.17 = 0.31 < 0.40: beyond.
        (
            "- **0.1**: best sfw 97.40 ± 0.14 %; magnitude 0.40 points below (beyond the seeds' spread); "
            "l0 misses it at density 0.118 (+18.0 %)."
        ),
        # sfw: 0.20 < 0.14 + 0.14: within; magnitude: 2.50 > 0.14 + 0.28: beyond.
        (
            "- **0.05**: best l0 96.50 ± 0.14 %; sfw 0.20 points below (within the seeds' spread); "
            "magnitude 2.50 points below (beyond the seeds' spread)."
        ),
        "- **0.02**: no method meets it; l0 misses it at density 0.035 (+75.0 %).",
    ]


def test_a_collapse_far_under_its_target_is_marked(tmp_path: Path) -> None:
    sweep = build_sweep(tmp_path / "sweep")
    # Every gate closed: within budget, at chance; still compared, but never read as landing.
    for seed, accuracy in ((0, 0.1000), (1, 0.1020)):
        overrides = ["method=gmp", "method.target_density=0.05", f"seed={seed}", "trainer.max_epochs=3"]
        write_job(sweep / f"collapse{seed}", "gmp", seed, 0.05, (accuracy, 0.001, 0.05, 40.0), overrides)
    # Just over half the budget: not marked.
    overrides = ["method=gmp", "method.target_density=0.1", "seed=0", "trainer.max_epochs=3"]
    write_job(sweep / "half", "gmp", 0, 0.1, (0.9600, 0.051, 0.05, 40.0), overrides)
    markdown = write_report(sweep)["markdown"].read_text()

    accuracy = {row["method"]: row for row in markdown_table(markdown, "### Side by side at matched target densities")}
    assert accuracy["gmp"]["0.05"] == "10.10 ± 0.14 ▽ (0.001)" and accuracy["gmp"]["0.1"] == "96.00"
    assert accuracy["l0"]["0.05"] == "96.50 ± 0.14 ★"  # the collapse does not change who is best
    lines = markdown.splitlines()
    density_heading = lines.index("Achieved density (fraction of weights kept) by target density:")
    density = {row["method"]: row for row in markdown_table(markdown, lines[density_heading])}
    assert density["gmp"]["0.05"] == "0.001 ± 0.000 ▽" and density["gmp"]["0.1"] == "0.051"
    shortfall = next(line for line in section(markdown, "#### Where methods fall short") if line.startswith("- **0.05**"))
    assert shortfall.endswith("gmp lands far under it at density 0.001.")
    rows = markdown_table(markdown, "## mnist / mlp")
    assert row_for(rows, "gmp", "0.050")["vs target"] == "-98.0 % ▽"
    assert row_for(rows, "gmp", "0.100")["vs target"] == "-49.0 %"


def test_methods_without_a_target_are_placed_between_targets(plain: dict[str, Path]) -> None:
    landing = section(plain["markdown"].read_text(), "#### Without a target: where they land")
    assert landing == [
        (
            "- l0_penalty (method.penalty=0.01): density 0.083, 97.00 %; at least as accurate as l0 "
            "(96.50 ± 0.14 % at target 0.05, a smaller budget, density 0.051); behind sfw (97.40 ± 0.14 % "
            "at target 0.1, a budget at least as large, density 0.100)."
        ),
    ]


def test_no_comparison_without_two_methods_at_a_target(sweep: Path, tmp_path: Path) -> None:
    only = tmp_path / "only_sfw"
    for job in sweep.iterdir():
        if (job / "results.json").is_file() and '"method": "sfw"' in (job / "results.json").read_text():
            (only / job.name).mkdir(parents=True)
            for item in ("results.json", ".hydra"):
                source = job / item
                target = only / job.name / item
                if source.is_dir():
                    target.mkdir()
                    for file in source.iterdir():
                        (target / file.name).write_bytes(file.read_bytes())
                else:
                    target.write_bytes(source.read_bytes())
    markdown = write_report(only)["markdown"].read_text()
    assert "### Side by side" not in markdown
    assert len(markdown_table(markdown, "## mnist / mlp")) == 2


def test_curve_of_a_run_without_target_competes_at_matching_targets(compared: dict[str, Path]) -> None:
    paths = compared
    markdown = paths["markdown"].read_text()
    rows = markdown_table(markdown, "## mnist / mlp")
    pruned = [r for r in rows if r["variant"] == CURVE_VARIANT]
    assert [
        (r["method"], r["target"], r["density"], r["test acc (%)"], r["latency (ms)"]) for r in pruned
    ] == [
        ("dense", "0.050", "0.050", "91.00", "—"),
        ("dense", "0.100", "0.100", "96.00", "—"),
    ]
    assert (
        row_for([r for r in rows if r["variant"] != CURVE_VARIANT], "dense", "—")["test acc (%)"] == "98.00"
    )
    assert "(2 of them points of compression curves)" in markdown
    assert f"- **{CURVE_VARIANT}**: a run without a target" in markdown
    shortfalls = section(markdown, "#### Where methods fall short")
    assert (
        "dense (pruned without retraining) 1.40 points below (one seed, no spread to judge by)"
        in shortfalls[0]
    )
    summary = pd.read_csv(paths["summary_csv"])
    curve = summary[summary["variant"] == CURVE_VARIANT]
    assert set(curve["target_density"]) == {0.1, 0.05} and not curve["best"].any()
    assert_png(paths["pareto"])


def test_per_method_settings_of_a_block_sweep_are_no_variants(compared: dict[str, Path]) -> None:
    markdown = compared["markdown"].read_text()
    rows = markdown_table(markdown, "## mnist / mlp")
    # method.finetune_epochs=1 is in every magnitude run's overrides, and only in theirs.
    assert {r["variant"] for r in rows if r["method"] == "magnitude"} == {"—"}
    # One penalty in the l0_penalty block: nothing to tell its runs apart (several: test_report_table).
    assert row_for(rows, "l0_penalty", "—")["variant"] == "—"
    assert "## Sweep" not in markdown  # the report says what the runs say, not what a plan said


def test_a_run_of_another_model_joins_the_sweeps_table(compared: dict[str, Path]) -> None:
    markdown = compared["markdown"].read_text()
    assert "## mnist / implicit" not in markdown
    row = row_for(markdown_table(markdown, "## mnist / mlp"), "implicit_fw", "0.100")
    assert row["variant"] == "model=implicit" and row["test acc (%)"] == "95.00"
    assert "implicit_fw: 485.9k params, 485.0k MACs, latency 0.500 ms (mean over runs)" in markdown
    accuracy = {
        r["method"]: r for r in markdown_table(markdown, "### Side by side at matched target densities")
    }
    assert accuracy["implicit_fw (model=implicit)"]["0.1"] == "95.00"
    runs = pd.read_csv(compared["results_csv"])
    moved = runs[runs["method"] == "implicit_fw"].iloc[0]
    assert (moved["model"], moved["run_model"]) == ("mlp", "implicit")
    assert set(runs.loc[runs["method"] != "implicit_fw", "run_model"]) == {"mlp"}
