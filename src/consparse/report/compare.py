"""The side-by-side part of a report: methods compared at matched target densities.

Added to the report of every (dataset, model) where at least two methods (or variants) ran at the
same target density, which is what ``experiment=compare_*`` sweeps produce:

* **Accuracy and density matrices**: one row per method (and variant), one column per target, so
  that the methods read side by side at each density; ★ marks the best at a target, ⚠ a method that
  misses it, ▽ one far under it (its achieved density is then shown beside the accuracy).
* **Where methods fall short**, one line per target: the best; how far each other method that
  meets the target is below it, and whether the gap is beyond the seeds' spread (the difference of
  the means exceeds the sum of the two standard deviations, a rule of thumb, not a test); which
  methods miss the target and by how much, and which land far under it.
* **Without a target** (``l0_penalty``, unpruned ``dense``): where each lands, and whether it is at
  least as accurate as the best method at the next target below (a smaller budget of weights) and
  at the next target above (a budget at least as large), with what those kept.
* **Pruned without retraining**: the unstructured compression curve of a run without a target
  (``dense`` in the compare presets) at an amount of exactly 1 - target becomes a summary row with
  the variant ``pruned without retraining`` (``curve_rows``): the classic baseline, judged like any
  other row. It has no latency or training time of its own.
"""

from __future__ import annotations

import pandas as pd

from consparse.report.format import is_nan, markdown_table, mean_std, percent
from consparse.report.summary import UNDER_FACTOR

CURVE_VARIANT = "pruned without retraining"
# An amount of the curve matches a target when 1 - amount is this close to it.
AMOUNT_MATCH = 1e-6


# ------------------------------------------------------------------------------- curve rows
def curve_rows(summary: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Summary rows (same columns as ``summary``) for the unstructured curve points of groups without
    a target at ``amount = 1 - target``, for the targets of their (dataset, model)."""
    records = []
    if not curves.empty:
        unstructured = curves[(curves["kind"] == "unstructured") & curves["target_density"].isna()]
        for (dataset, model), group in summary.groupby(["dataset", "model"], sort=True):
            targets = sorted(group["target_density"].dropna().unique())
            points = unstructured[(unstructured["dataset"] == dataset) & (unstructured["model"] == model)]
            for _, point in points.iterrows():
                target = next((t for t in targets if abs(1.0 - point["amount"] - t) < AMOUNT_MATCH), None)
                source = group[
                    (group["method"] == point["method"])
                    & group["target_density"].isna()
                    & (group["variant"] == point["variant"])
                ]
                if target is None or source.empty:
                    continue
                record = source.iloc[0].to_dict()
                record.update(
                    target_density=target,
                    variant=", ".join(filter(None, [point["variant"], CURVE_VARIANT])),
                    n_seeds=point["n_seeds"],
                    n_failed=0,
                    latency_ms_mean=float("nan"),
                    latency_ms_std=float("nan"),
                    train_seconds_mean=float("nan"),
                    train_seconds_std=float("nan"),
                    # The curve measures test accuracy only.
                    val_accuracy_mean=float("nan"),
                    val_accuracy_std=float("nan"),
                )
                for metric in ("test_accuracy", "density", "params", "macs"):
                    record[f"{metric}_mean"] = point[f"{metric}_mean"]
                    record[f"{metric}_std"] = point[f"{metric}_std"] if point["n_seeds"] > 1 else float("nan")
                records.append(record)
    return pd.DataFrame.from_records(records, columns=summary.columns)


# ---------------------------------------------------------------------------- the comparison
def comparison_lines(group: pd.DataFrame, tolerance: float) -> list[str]:
    """Markdown for one (dataset, model): matrices, shortfalls, methods without a target.
    Empty when fewer than two rows share a target (nothing to compare side by side)."""
    targeted = group[group["target_density"].notna()]
    shared = targeted.groupby("target_density")["method"].size()
    if shared.empty or shared.max() < 2:
        return []
    targets = sorted(targeted["target_density"].unique(), reverse=True)
    labels = sorted({_label(row) for _, row in targeted.iterrows()})
    cells = {(_label(row), row["target_density"]): row for _, row in targeted.iterrows()}
    header = ["method", *(f"{t:g}" for t in targets)]

    def matrix(render) -> list[str]:
        rows = [
            [label, *(render(cells[(label, t)]) if (label, t) in cells else "—" for t in targets)]
            for label in labels
        ]
        return markdown_table(header, rows)

    lines = [
        "",
        "### Side by side at matched target densities",
        "",
        (
            f"Test accuracy (%) by target density (columns). ★ best at the target; ⚠ misses it (density above "
            f"target × {1 + tolerance:g}); ▽ far under it (density below target × {UNDER_FACTOR:g}); the "
            "achieved density in brackets after either; — not run."
        ),
        "",
        *matrix(_accuracy_cell),
        "",
        "Achieved density (fraction of weights kept) by target density:",
        "",
        *matrix(_density_cell),
        "",
        "#### Where methods fall short",
        "",
        *(_shortfall(t, targeted[targeted["target_density"] == t]) for t in targets),
    ]
    untargeted = group[group["target_density"].isna()]
    if not untargeted.empty:
        lines += ["", "#### Without a target: where they land", ""]
        lines += [_landing(row, targeted) for _, row in untargeted.sort_values("density_mean").iterrows()]
    return lines


def _label(row: pd.Series) -> str:
    return f"{row['method']} ({row['variant']})" if row["variant"] else str(row["method"])


def _accuracy(row: pd.Series) -> str:
    return mean_std(row["test_accuracy_mean"], row["test_accuracy_std"], percent)


def _accuracy_cell(row: pd.Series) -> str:
    text = _accuracy(row)
    if row["best"]:
        text += " ★"
    mark = density_mark(row)
    return text + (f"{mark} ({row['density_mean']:.3f})" if mark else "")


def _density_cell(row: pd.Series) -> str:
    return mean_std(row["density_mean"], row["density_std"], lambda v: f"{v:.3f}") + density_mark(row)


def density_mark(row: pd.Series) -> str:
    """`` ⚠`` for a row above its target, `` ▽`` for one far under it, else empty."""
    if _misses(row):
        return " ⚠"
    return " ▽" if _far_under(row) else ""


def _misses(row: pd.Series) -> bool:
    return not is_nan(row["meets_target"]) and not bool(row["meets_target"])


def _far_under(row: pd.Series) -> bool:
    return not is_nan(row["far_under_target"]) and bool(row["far_under_target"])


def _shortfall(target: float, rows: pd.DataFrame) -> str:
    best = rows[rows["best"]]
    parts = []
    if best.empty:
        parts.append("no method meets it")
    else:
        parts.append("best " + " and ".join(f"{_label(b)} {_accuracy(b)} %" for _, b in best.iterrows()))
        top = best.iloc[0]
        meeting = rows[rows["meets_target"].fillna(False).astype(bool) & ~rows["best"]]
        for _, row in meeting.sort_values("test_accuracy_mean", ascending=False).iterrows():
            parts.append(f"{_label(row)} {_gap(top, row)}")
    for _, row in rows[[_misses(row) for _, row in rows.iterrows()]].iterrows():
        parts.append(
            f"{_label(row)} misses it at density {row['density_mean']:.3f} ({100 * row['density_vs_target']:+.1f} %)"
        )
    for _, row in rows[[_far_under(row) for _, row in rows.iterrows()]].iterrows():
        parts.append(f"{_label(row)} lands far under it at density {row['density_mean']:.3f}")
    return f"- **{target:g}**: " + "; ".join(parts) + "."


def _gap(best: pd.Series, row: pd.Series) -> str:
    gap = 100 * (best["test_accuracy_mean"] - row["test_accuracy_mean"])
    spread = 100 * (best["test_accuracy_std"] + row["test_accuracy_std"])
    if is_nan(gap):
        return "has no accuracy"
    if is_nan(spread):
        verdict = "one seed, no spread to judge by"
    elif gap > spread:
        verdict = "beyond the seeds' spread"
    else:
        verdict = "within the seeds' spread"
    return f"{gap:.2f} points below ({verdict})"


def _landing(row: pd.Series, targeted: pd.DataFrame) -> str:
    density = row["density_mean"]
    text = f"- {_label(row)}: density {mean_std(density, row['density_std'], lambda v: f'{v:.3f}')}, {_accuracy(row)} %"
    if is_nan(density):
        return text + "."
    best = targeted[targeted["best"]]
    # The best at the next target below had a smaller budget of weights, the best at the next one above
    # a budget at least as large (what each kept is shown: l0's purge often keeps less than its target).
    neighbours = (
        (best[best["target_density"] < density], "idxmax", "a smaller budget", "falls short of"),
        (best[best["target_density"] >= density], "idxmin", "a budget at least as large", "behind"),
    )
    notes = []
    for rows, pick, budget, worse in neighbours:
        if rows.empty:
            continue
        neighbour = rows.loc[getattr(rows["target_density"], pick)()]
        verdict = (
            "at least as accurate as"
            if row["test_accuracy_mean"] >= neighbour["test_accuracy_mean"]
            else worse
        )
        notes.append(
            f"{verdict} {_label(neighbour)} ({_accuracy(neighbour)} % at target {neighbour['target_density']:g}, "
            f"{budget}, density {neighbour['density_mean']:.3f})"
        )
    return text + ("; " + "; ".join(notes) if notes else "") + "."
