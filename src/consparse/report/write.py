"""Writing a report: collect the runs below a directory, tabulate, summarise, draw and render.

Files, in the output directory: ``results.csv`` (one row per run, ``consparse.report.table``),
``summary.csv`` (one row per group of seeds, ``consparse.report.summary``),
``compression_curves.csv``, ``tuning.csv`` (a tuned sweep's choice per variant,
``consparse.report.tuned``, whose search runs at the values not chosen are left out of everything
else), ``results.md`` (``consparse.report.markdown``) and the plots
(``consparse.report.plots``): ``pareto.png`` and ``compression_curves.png``, or with several
(dataset, model) pairs in one directory ``pareto_<dataset>_<model>.png`` and so on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from consparse.report.collect import collect_results
from consparse.report.compare import curve_rows
from consparse.report.markdown import render_markdown
from consparse.report.summary import DEFAULT_TOLERANCE, judge, summarise_curves, summarise_table
from consparse.report.table import curve_points, runs_table
from consparse.report.tuned import selection_table, split_tuning, tuning_lines
from consparse.validation import check_range

RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
CURVES_CSV = "compression_curves.csv"
REPORT_MD = "results.md"
TUNING_CSV = "tuning.csv"

Images = dict[tuple[str, str], list[tuple[str, str]]]


def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    group_by: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Path]:
    """Aggregate every run below ``root`` and write the report files into ``out_dir`` (default ``root``).

    Returns the written paths by name: ``results_csv``, ``summary_csv``, ``markdown``, ``tuning_csv``
    for a tuned sweep, and when there is something to draw ``curves_csv``, ``pareto`` / ``compression_curves`` (one pair of
    (dataset, model)) or ``pareto_<dataset>_<model>`` / ``compression_curves_<dataset>_<model>``.
    Raises NoResultsError when ``root`` holds no ``results.json``.
    """
    check_range("report.tolerance", tolerance, 0.0)
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    split = split_tuning(collect_results(root))
    rows = split.kept
    table = runs_table(rows, root, group_by)
    summary = summarise_table(table, tolerance=tolerance)
    curves = summarise_curves(curve_points(rows, list(table["variant"])))
    pruned = curve_rows(summary, curves)
    if not pruned.empty:
        summary = judge(pd.concat([summary, pruned], ignore_index=True), tolerance=tolerance)

    paths = {"results_csv": out / RESULTS_CSV, "summary_csv": out / SUMMARY_CSV}
    table.to_csv(paths["results_csv"], index=False)
    summary.to_csv(paths["summary_csv"], index=False)
    if not curves.empty:
        paths["curves_csv"] = out / CURVES_CSV
        curves.to_csv(paths["curves_csv"], index=False)
    if split.selections:
        paths["tuning_csv"] = out / TUNING_CSV
        selection_table(split).to_csv(paths["tuning_csv"], index=False)
    images = _draw(summary, curves, out, paths)
    pairs = summary.groupby(["dataset", "model"]).groups
    markdown = render_markdown(
        table, summary, title=f"consparse results: {root.resolve().name}", tolerance=tolerance, images=images,
        sections={pair: tuning_lines(split, pair, root) for pair in pairs}, tuning_runs=len(split.tuning_runs),
    )
    paths["markdown"] = out / REPORT_MD
    paths["markdown"].write_text(markdown)
    return paths


def _draw(summary: pd.DataFrame, curves: pd.DataFrame, out: Path, paths: dict[str, Path]) -> Images:
    """Plots per (dataset, model), added to ``paths``; returns what results.md embeds under each table."""
    from consparse.report.plots import plot_compression_curves, plot_pareto  # matplotlib only when drawing

    pairs = sorted(summary.groupby(["dataset", "model"]).groups)
    images: Images = {}
    for dataset, model in pairs:
        suffix = "" if len(pairs) == 1 else f"_{_slug(dataset)}_{_slug(model)}"
        label = f"{dataset} / {model}"
        pair_summary = summary[(summary["dataset"] == dataset) & (summary["model"] == model)]
        pareto = plot_pareto(pair_summary, out / f"pareto{suffix}.png", title=label)
        paths[f"pareto{suffix}"] = pareto
        images[(dataset, model)] = [(f"{label}: test accuracy against density, params, MACs and latency", pareto.name)]
        pair_curves = curves[(curves["dataset"] == dataset) & (curves["model"] == model)] if not curves.empty else curves
        if not pair_curves.empty:
            curve_png = plot_compression_curves(
                pair_curves, out / f"compression_curves{suffix}.png", title=label, methods=list(pair_summary["method"])
            )
            paths[f"compression_curves{suffix}"] = curve_png
            images[(dataset, model)].append((f"{label}: compression without retraining", curve_png.name))
    return images


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
