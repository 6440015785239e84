"""Averaging over seeds and judging: one summary row per group of seeds, who meets its target, who is best.

* **Groups.** One table per (dataset, model). Within it one row per (method, target density,
  variant), averaged over seeds (the variant label: ``consparse.report.table``).
* **Mean ± std.** Sample standard deviation (ddof 1) over the completed seeds of a group. With a
  single seed the std is undefined: ``summary.csv`` leaves it empty and the markdown shows the value
  alone, so that a missing spread is never mistaken for a measured zero.
* **Density tolerance.** Relative, default 5 %: a group meets its target when its mean achieved
  density is at most ``target * (1 + tolerance)``. Relative, because the targets studied here go
  down to 0.01, where an absolute 0.02 would accept three times the allowed weights. One-sided,
  because a model sparser than asked is within budget (what it costs shows in its accuracy); the
  signed deviation is shown either way.
* **Far under the target.** A group whose mean density is below ``target * UNDER_FACTOR`` leaves
  most of its budget unused (a method that stops early, or one whose gates all closed); it still
  meets the target and may be best, but ``far_under_target`` marks it (▽) so that a collapse
  is never read as landing.
* **Best at a target.** The highest mean test accuracy among the groups with that target density
  that meet it; groups without a target (dense, ``l0_penalty``) do not compete.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from consparse.report.collect import COMPLETED
from consparse.report.format import is_nan
from consparse.report.results import CURVE_KEYS
from consparse.report.table import runs_table
from consparse.tuning import TARGET_TOLERANCE as DEFAULT_TOLERANCE
from consparse.validation import check_range

IDENTITY = ("dataset", "model", "method", "target_density", "variant")
# Figures averaged over seeds in the summary.
SUMMARY_METRICS = ("test_accuracy", "val_accuracy", "density", "params", "macs", "latency_ms", "train_seconds")
DENSE_METRICS = ("dense_params", "dense_macs", "dense_latency_ms")
# A density below target x this uses less than half its budget: marked, not disqualified.
UNDER_FACTOR = 0.5


def summarise(
    rows: Sequence[Mapping[str, Any]],
    *,
    group_by: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, model, method, target_density, variant).

    Columns: the identity, ``n_seeds``, ``n_failed`` (unsuccessful runs of the same group),
    ``seeds``, ``<metric>_mean`` and ``<metric>_std`` for ``SUMMARY_METRICS`` (std NaN for a single
    seed), ``<dense metric>_mean``, ``density_vs_target`` ((density - target) / target),
    ``meets_target`` and ``far_under_target`` (NA without a target) and ``best`` (see the module
    docstring).
    """
    return summarise_table(runs_table(rows, group_by=group_by), tolerance=tolerance)


def summarise_table(table: pd.DataFrame, *, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """``summarise`` for a table made by ``runs_table``."""
    keyed = _with_group_keys(table)
    # Grouped by hand: pandas turns tuple keys into a MultiIndex, where None targets become NaN
    # and no longer match between completed and failed runs.
    completed: dict[tuple, list[Any]] = {}
    failed_counts: Counter[tuple] = Counter()
    for index, key, status in zip(keyed.index, keyed["_key"], keyed["status"]):
        if status == COMPLETED:
            completed.setdefault(key, []).append(index)
        else:
            failed_counts[key] += 1
    records = []
    for key, indices in completed.items():
        group = keyed.loc[indices]
        record: dict[str, Any] = dict(zip(IDENTITY, key))
        record["n_seeds"] = len(group)
        record["n_failed"] = failed_counts[key]
        record["seeds"] = ", ".join(str(s) for s in sorted(group["seed"].dropna().unique()))
        for metric in SUMMARY_METRICS:
            values = group[metric].dropna()
            record[f"{metric}_mean"] = values.mean() if len(values) else math.nan
            record[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        for metric in DENSE_METRICS:
            record[f"{metric}_mean"] = group[metric].mean()
        records.append(record)
    summary = pd.DataFrame.from_records(
        records,
        columns=[
            *IDENTITY,
            "n_seeds",
            "n_failed",
            "seeds",
            *(f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")),
            *(f"{m}_mean" for m in DENSE_METRICS),
        ],
    )
    return judge(summary, tolerance=tolerance)


def judge(summary: pd.DataFrame, *, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Add ``density_vs_target``, ``meets_target``, ``far_under_target`` and ``best`` to summary rows and sort them; rows
    added after ``summarise_table`` (e.g. ``consparse.report.compare.curve_rows``) are judged with the rest."""
    check_range("report.tolerance", tolerance, 0.0)
    summary = summary.reset_index(drop=True)
    summary["target_density"] = pd.to_numeric(summary["target_density"])
    summary["density_vs_target"] = (summary["density_mean"] - summary["target_density"]) / summary["target_density"]
    has_target = summary["target_density"].notna()
    meets = summary["density_mean"] <= summary["target_density"] * (1.0 + tolerance) + 1e-12
    summary["meets_target"] = meets.astype("boolean").where(has_target, pd.NA)
    far_under = summary["density_mean"].combine(summary["target_density"], _far_under)
    summary["far_under_target"] = far_under.astype("boolean").where(has_target, pd.NA)
    summary["best"] = _best_at_target(summary)
    order = ["dataset", "model", "target_density", "method", "variant", "density_mean"]
    return summary.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)


def far_under_target(run: Mapping[str, Any]) -> bool:
    """Whether a run's density is below its (single) target x ``UNDER_FACTOR`` (see the module docstring)."""
    return _far_under(run.get("density"), run.get("target_density"))


def _far_under(density: Any, target: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (density, target))
    return numbers and density < target * UNDER_FACTOR


def _with_group_keys(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``_key``, the group of each run, with unknown names as ``?`` and targets rounded so that
    0.1 and 0.1000000001 from different writers fall in the same group."""
    keyed = table.copy()
    for column in ("dataset", "model", "method"):
        keyed[column] = keyed[column].astype(object).where(keyed[column].notna(), "?").astype(str)
    targets = keyed["target_density"].round(9)
    keyed["_key"] = [
        (d, m, me, None if is_nan(t) else float(t), v)
        for d, m, me, t, v in zip(keyed["dataset"], keyed["model"], keyed["method"], targets, keyed["variant"])
    ]
    return keyed


def _best_at_target(summary: pd.DataFrame) -> pd.Series:
    best = pd.Series(False, index=summary.index)
    eligible = summary[summary["meets_target"].fillna(False).astype(bool)]
    for _, group in eligible.groupby(["dataset", "model", "target_density"]):
        accuracy = group["test_accuracy_mean"]
        if accuracy.notna().any():
            best[group.index[accuracy >= accuracy.max() - 1e-12]] = True
    return best


def summarise_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each curve point, per (dataset, model, method, target, variant, kind, amount)."""
    keys = [*IDENTITY, "kind", "amount"]
    values = [key for key in CURVE_KEYS if key not in keys]
    numeric = points.copy()
    for column in ["target_density", "amount", *values]:
        numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    grouped = numeric.groupby(keys, dropna=False, sort=True)[values]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    summary["n_seeds"] = grouped.size()
    return summary.reset_index()
