"""The report's markdown (``results.md``): counts, legend, one table per (dataset, model) with its
side-by-side comparison (``consparse.report.compare``) and plots, and the runs that did not complete.

* **Failures.** Runs whose status is not ``completed``, ``results.json`` files that cannot be read
  and Hydra job directories without a ``results.json`` (crashed, killed or still running) are all
  listed in their own section with the first line of their error, and counted beside their group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from consparse.report.collect import COMPLETED
from consparse.report.compare import CURVE_VARIANT, comparison_lines, density_mark
from consparse.report.format import (
    cell,
    first_line,
    format_count,
    is_nan,
    markdown_table,
    mean_std,
    percent,
    significant_decimals,
)
from consparse.report.summary import UNDER_FACTOR


def render_markdown(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    title: str,
    tolerance: float,
    images: Mapping[tuple[str, str], Sequence[tuple[str, str]]] | None = None,
    sections: Mapping[tuple[str, str], Sequence[str]] | None = None,
    tuning_runs: int = 0,
) -> str:
    """The report: title, counts, legend, one table per
    (dataset, model) with its side-by-side comparison (``consparse.report.compare``) and plots, failures.

    ``images`` maps (dataset, model) to ``(caption, relative path)`` pairs to embed under its table,
    ``sections`` to further markdown lines after its comparison (a tuned sweep's "Tuning on
    validation", ``consparse.report.tuned``); ``tuning_runs`` counts the search runs left out.
    """
    completed = int((table["status"] == COMPLETED).sum())
    unsuccessful = len(table) - completed
    pairs = summary.groupby(["dataset", "model"]).ngroups
    from_curves = int(summary["variant"].astype(str).str.endswith(CURVE_VARIANT).sum())
    lines = [
        f"# {title}",
        "",
        (
            f"{len(table)} runs: {completed} completed, {unsuccessful} failed or missing; "
            f"{len(summary)} groups of seeds in {pairs} table{'s' if pairs != 1 else ''}"
            + (f" ({from_curves} of them points of compression curves)." if from_curves else ".")
            + (f" {tuning_runs} tuning runs at values not chosen are left out (see Tuning on validation)."
               if tuning_runs else "")
        ),
        "",
        *_legend(tolerance),
        *([CURVE_LEGEND] if from_curves else []),
    ]
    for (dataset, model), group in summary.groupby(["dataset", "model"], sort=True):
        lines += _pair_section(table, group, (dataset, model), tolerance, (images or {}).get((dataset, model), ()))
        lines += (sections or {}).get((dataset, model), [])
    lines += ["", *_failures_section(table)]
    return "\n".join(lines) + "\n"


def _pair_section(
    table: pd.DataFrame,
    group: pd.DataFrame,
    pair: tuple[str, str],
    tolerance: float,
    images: Sequence[tuple[str, str]],
) -> list[str]:
    """The section of one (dataset, model): dense reference, table, targets missed, comparison, plots."""
    dataset, model = pair
    lines = ["", f"## {dataset} / {model}", ""]
    dense = _dense_reference(table, dataset, model)
    if dense:
        lines += [dense, ""]
    show_variant = bool((group["variant"] != "").any())
    # Runs written before results.json had val_accuracy, or without a held-out split, have none to show.
    show_val = bool(group["val_accuracy_mean"].notna().any())
    header = [TABLE_HEADER[0], *(["variant"] if show_variant else []), *TABLE_HEADER[1:]]
    if show_val:
        header.insert(header.index("test acc (%)") + 1, VAL_HEADER)
    lines += markdown_table(header, (_format_row(row, show_variant, show_val) for _, row in group.iterrows()))
    missed = _targets_missed(group, tolerance)
    if missed:
        lines += ["", *missed]
    lines += comparison_lines(group, tolerance)
    for caption, path in images:
        lines += ["", f"![{caption}]({path})"]
    return lines


TABLE_HEADER = ("method", "target", "density", "vs target", "test acc (%)", "params", "MACs", "latency (ms)",
                "train (s)", "n", "best")
VAL_HEADER = "val acc (%)"
CURVE_LEGEND = (
    f"- **{CURVE_VARIANT}**: a run without a target (e.g. dense) magnitude-pruned to the target by the "
    "shared compression curve, without retraining; judged like the others, no latency or training time of its own."
)


def _legend(tolerance: float) -> list[str]:
    return [
        "How to read the tables (one per dataset and model):",
        "",
        "- **target**: the density asked for (`method.target_density`); — for methods that take none.",
        "- **density**: achieved fraction of nonzero sparsifiable weights in the final model.",
        (
            f"- **vs target**: (density − target) / target; ⚠ when above the target by more than "
            f"{100 * tolerance:g} % (relative; sparser than asked is within budget); ▽ when below "
            f"target × {UNDER_FACTOR:g} (most of the budget unused, e.g. a collapse: within budget, but not landing)."
        ),
        "- **test acc**: top-1 accuracy on the test split, in %.",
        (
            "- **val acc**: the same on the validation split held out of the training set (shown where runs "
            "measured it); a tuned sweep chooses by it, never by test accuracy."
        ),
        "- **params**, **MACs** (per sample): of the deployed model (k = 10³, M = 10⁶, G = 10⁹).",
        "- **latency**: CPU latency of the exported model in ms; **train**: training wall time in s.",
        "- **n**: completed seeds (unsuccessful runs of the same group in brackets).",
        "- Values are mean ± sample std (ddof 1) over seeds; with a single seed the mean alone is shown.",
        (
            "- **★**: best at its target: highest mean test accuracy among the rows with that target "
            "whose density meets it; rows without a target do not compete."
        ),
    ]


def _dense_reference(table: pd.DataFrame, dataset: str, model: str) -> str:
    """One line with the dense reference counts; per method only where their params or MACs differ
    (e.g. implicit_fw against a dense implicit model). Latency is the mean over the runs it covers."""
    runs = table[(table["status"] == COMPLETED) & (table["dataset"] == dataset) & (table["model"] == model)]
    counts = {method: _dense_counts(group) for method, group in runs.groupby("method", sort=True)}
    counts = {method: text for method, text in counts.items() if text}
    if not counts:
        return ""
    if len(set(counts.values())) == 1:
        return f"Dense reference: {_dense_description(runs)}."
    described = [f"{method}: {_dense_description(runs[runs['method'] == method])}" for method in counts]
    return "Dense reference: " + "; ".join(described) + "."


def _dense_counts(runs: pd.DataFrame) -> str:
    params, macs = runs["dense_params"].mean(), runs["dense_macs"].mean()
    parts = [] if is_nan(params) else [f"{format_count(params)} params"]
    return ", ".join(parts + ([] if is_nan(macs) else [f"{format_count(macs)} MACs"]))


def _dense_description(runs: pd.DataFrame) -> str:
    latency = runs["dense_latency_ms"].mean()
    parts = [_dense_counts(runs)] if _dense_counts(runs) else []
    if not is_nan(latency):
        parts.append(f"latency {latency:.{significant_decimals(latency)}f} ms (mean over runs)")
    return ", ".join(parts)


def _targets_missed(group: pd.DataFrame, tolerance: float) -> list[str]:
    notes = []
    for target, rows in group[group["target_density"].notna()].groupby("target_density", sort=True):
        if rows["best"].any():
            continue
        closest = rows.loc[rows["density_mean"].idxmin()] if rows["density_mean"].notna().any() else None
        detail = f"; the sparsest is {closest['method']} at {closest['density_mean']:.3f}" if closest is not None else ""
        notes.append(
            f"- No method meets target {target:.3f} (density ≤ target × {1 + tolerance:g}){detail}, so none is marked best."
        )
    return notes


def _failures_section(table: pd.DataFrame) -> list[str]:
    failed = table[table["status"] != COMPLETED]
    lines = [f"## Failed or missing runs ({len(failed)})", ""]
    if failed.empty:
        return lines + ["None: every run completed."]
    header = ["run dir", "status", "method", "model", "dataset", "seed", "target", "error (first line)"]
    rows = []
    for _, run in failed.iterrows():
        rows.append(
            [
                cell(run["run_dir"]),
                cell(run["status"] if isinstance(run["status"], str) else "?"),
                *(cell(run[c] if isinstance(run[c], str) else "?") for c in ("method", "model", "dataset")),
                "?" if pd.isna(run["seed"]) else str(run["seed"]),
                "—" if is_nan(run["target_density"]) else f"{run['target_density']:.3f}",
                cell(first_line(run["error"])),
            ]
        )
    return lines + markdown_table(header, rows)


def _format_row(row: pd.Series, show_variant: bool, show_val: bool = False) -> list[str]:
    decimals = significant_decimals(row["latency_ms_mean"])
    seconds = significant_decimals(row["train_seconds_mean"])
    target = row["target_density"]
    deviation = row["density_vs_target"]
    if is_nan(target) or is_nan(deviation):
        versus = ""
    else:
        versus = f"{100 * deviation:+.1f} %" + density_mark(row)
    count = str(row["n_seeds"]) + (f" (+{row['n_failed']} failed)" if row["n_failed"] else "")
    cells = [
        row["method"],
        *([row["variant"] or "—"] if show_variant else []),
        "—" if is_nan(target) else f"{target:.3f}",
        mean_std(row["density_mean"], row["density_std"], lambda v: f"{v:.3f}"),
        versus,
        mean_std(row["test_accuracy_mean"], row["test_accuracy_std"], percent),
        *([mean_std(row["val_accuracy_mean"], row["val_accuracy_std"], percent)] if show_val else []),
        mean_std(row["params_mean"], row["params_std"], format_count),
        mean_std(row["macs_mean"], row["macs_std"], format_count),
        mean_std(row["latency_ms_mean"], row["latency_ms_std"], lambda v: f"{v:.{decimals}f}"),
        mean_std(row["train_seconds_mean"], row["train_seconds_std"], lambda v: f"{v:.{seconds}f}"),
        count,
        "★" if row["best"] else "",
    ]
    return [cell(c) for c in cells]
