"""PNG plots of a sweep: test accuracy against the costs of the deployed model, and compression curves.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``) rather
than through ``pyplot``, so that reporting neither needs a display nor switches the backend of a
notebook or program that imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

from consparse.report.compare import CURVE_VARIANT

# (summary column prefix, x label) of the four panels of pareto.png.
PARETO_PANELS = (
    ("density", "achieved density (fraction of weights kept)"),
    ("params", "parameters of the deployed model"),
    ("macs", "MACs per sample of the deployed model"),
    ("latency_ms", "CPU latency of the exported model (ms)"),
)
# x axis of each compression curve kind: pruning removes weights, filters and ranks remove params.
CURVE_PANELS = {
    "unstructured": ("density", "density (fraction of weights kept)", "unstructured pruning"),
    "filter": ("params", "parameters", "filter pruning"),
    "lowrank": ("params", "parameters", "low-rank decomposition"),
    "nm": ("density", "density (fraction of weights kept)", "N:M pruning"),
}
COUNT_COLUMNS = ("params", "macs")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
# A span this wide reads better on a log axis (densities 0.01 to 1, params 3k to 300k).
LOG_SPAN = 10.0
DPI = 120


def method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """A (colour, marker) per method, stable for a given set of methods so figures agree."""
    colours = [f"C{i % 10}" for i in range(len(methods))]
    return {m: (colours[i], MARKERS[i % len(MARKERS)]) for i, m in enumerate(sorted(set(methods)))}


def plot_pareto(summary: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Four panels: mean test accuracy (%) against density, params, MACs and latency, one line per
    method through its groups (sorted by x; its rows pruned without retraining dashed, apart), std
    error bars on both axes, target densities as dotted lines. ``summary`` comes from ``consparse.report.summary.summarise`` for one
    (dataset, model)."""
    figure = _figure(2, 2, (12, 9))
    axes = figure.axes
    styles = method_styles(list(summary["method"]))
    # Rows made from a compression curve (consparse.report.compare.curve_rows) get their own dashed
    # line in the method's colour, apart from the method's trained runs.
    pruned = summary["variant"].astype(str).str.endswith(CURVE_VARIANT)
    for ax, (column, label) in zip(axes, PARETO_PANELS):
        xs = []
        for (method, from_curve), rows in summary.assign(_curve=pruned).groupby(["method", "_curve"], sort=True):
            points = rows.dropna(subset=[f"{column}_mean", "test_accuracy_mean"]).sort_values(f"{column}_mean")
            if points.empty:
                continue
            colour, marker = styles[method]
            x = points[f"{column}_mean"].to_numpy(float)
            ax.errorbar(
                x,
                100 * points["test_accuracy_mean"].to_numpy(float),
                xerr=np.nan_to_num(points[f"{column}_std"].to_numpy(float)),
                yerr=100 * np.nan_to_num(points["test_accuracy_std"].to_numpy(float)),
                label=f"{method}, {CURVE_VARIANT}" if from_curve else method,
                color=colour,
                marker=marker,
                markersize=5 if from_curve else 7,
                linewidth=1.5,
                linestyle="--" if from_curve else "-",
                mfc="none" if from_curve else colour,
                capsize=3,
            )
            xs.extend(x)
        _style_axis(ax, column, label, xs, "test accuracy (%)")
    _mark_targets(axes[0], summary["target_density"].dropna().unique())
    _legend(figure, axes, columns=4)
    figure.suptitle(f"{title}: test accuracy (mean ± std over seeds) against the cost of the deployed model")
    return _save(figure, path)


def plot_compression_curves(
    curves: pd.DataFrame, path: str | Path, title: str, methods: Sequence[str] | None = None
) -> Path:
    """One panel per compression kind present: mean test accuracy (%) against density
    (unstructured) or params (filter, lowrank), one line per (method, target, variant), std bars.
    ``curves`` comes from ``consparse.report.summary.summarise_curves`` for one (dataset, model);
    ``methods`` (default: those in ``curves``) fixes the colours, to match ``plot_pareto``'s."""
    kinds = [kind for kind in CURVE_PANELS if kind in set(curves["kind"])]
    panels = max(len(kinds), 1)
    figure = _figure(1, panels, (max(6.5 * panels, 9.0), 6.0))
    styles = method_styles(list(methods) if methods is not None else list(curves["method"]))
    for ax, kind in zip(figure.axes, kinds):
        column, label, panel_title = CURVE_PANELS[kind]
        xs = []
        runs = curves[curves["kind"] == kind]
        for (method, target, variant), points in runs.groupby(["method", "target_density", "variant"], dropna=False, sort=True):
            points = points.dropna(subset=[f"{column}_mean", "test_accuracy_mean"]).sort_values(f"{column}_mean")
            if points.empty:
                continue
            colour, marker = styles[method]
            x = points[f"{column}_mean"].to_numpy(float)
            ax.errorbar(
                x,
                100 * points["test_accuracy_mean"].to_numpy(float),
                xerr=np.nan_to_num(points[f"{column}_std"].to_numpy(float)),
                yerr=100 * np.nan_to_num(points["test_accuracy_std"].to_numpy(float)),
                label=_curve_label(method, target, variant),
                color=colour,
                marker=marker,
                markersize=5,
                linewidth=1.2,
                capsize=2,
                # Runs of one method at several targets share its colour; the dash tells them apart.
                linestyle=_dash(target, runs, method),
            )
            xs.extend(x)
        _style_axis(ax, column, label, xs, "test accuracy (%)")
        ax.set_title(panel_title)
    _legend(figure, figure.axes, columns=2 * panels)
    figure.suptitle(f"{title}: compressing the trained model without retraining\n(mean ± std over seeds)")
    return _save(figure, path)


def _figure(rows: int, cols: int, size: tuple[float, float]) -> Figure:
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    figure.subplots(rows, cols, squeeze=False)
    return figure


def _style_axis(ax: Axes, column: str, label: str, xs: Sequence[float], ylabel: str) -> None:
    ax.set_xlabel(label)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    positive = [x for x in xs if x > 0 and math.isfinite(x)]
    span = max(positive) / min(positive) if positive else 1.0
    if span >= LOG_SPAN:
        ax.set_xscale("log")
        ax.grid(True, which="minor", alpha=0.12)
        # Over a few decades only, label 1-2-5 steps: powers of ten alone leave one or two labels.
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 1e3 else (1.0,)))
        # 0.01, 0.1, 1 read better than 10^-2, 10^-1, 10^0.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if column in COUNT_COLUMNS:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    if not xs:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")


def _mark_targets(ax: Axes, targets: Sequence[float]) -> None:
    """Dotted vertical lines at the target densities, so that overshooting a target shows."""
    for target in sorted(targets):
        ax.axvline(target, color="grey", linestyle=":", linewidth=1, zorder=0)
        ax.annotate(
            f"target {target:g}",
            (target, 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, 3),
            textcoords="offset points",
            rotation=90,
            va="bottom",
            fontsize=8,
            color="grey",
        )


def _legend(figure: Figure, axes: Sequence[Axes], columns: int) -> None:
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), columns), frameon=False)


def _curve_label(method: str, target: float, variant: str) -> str:
    label = method
    if not pd.isna(target):
        label += f" (target {target:g})"
    if variant:
        label += f" [{variant}]"
    return label


def _dash(target: float, runs: pd.DataFrame, method: str) -> str:
    targets = sorted(runs.loc[runs["method"] == method, "target_density"].dropna().unique())
    if pd.isna(target) or len(targets) < 2:
        return "-"
    return ("-", "--", ":", "-.")[targets.index(target) % 4]


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
