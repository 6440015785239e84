"""The side-by-side part of a report: methods compared at matched target densities.

Added to the report of every (dataset, model) where at least two methods (or variants) ran at the
same target density, which is what ``experiment=compare_*`` sweeps produce:

* **Accuracy and density matrices**: one row per method (and variant), one column per target, so
  that the methods read side by side at each density; ★ marks the best at a target, ⚠ a method that
  misses it (its achieved density is then shown beside the accuracy).
* **Where methods fall short**, one line per target: the best; how far each other method that
  meets the target is below it, and whether the gap is beyond the seeds' spread (the difference of
  the means exceeds the sum of the two standard deviations, a rule of thumb, not a test); which
  methods miss the target and by how much.
* **Without a target** (``l0_penalty``, unpruned ``dense``): where each lands, and whether it is at
  least as accurate as the best method at the next target below (a smaller budget of weights) and
  at the next target above (a budget at least as large), with what those kept.
* **Pruned without retraining**: the unstructured compression curve of a run without a target
  (``dense`` in the compare presets) at an amount of exactly 1 - target becomes a summary row with
  the variant ``pruned without retraining`` (``curve_rows``): the classic baseline, judged like any
  other row. It has no latency or training time of its own.

``sweep_lines`` describes the block sweeps (``consparse.sweeper``) whose ``sweep_plan.yaml`` lies
below the report's directory: the command, the wall time, the blocks run, the planned jobs an
interrupted sweep never reached, and the blocks not run.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from consparse.report.format import is_nan, markdown_table, mean_std, percent
from consparse.sweeper import DESELECTED, PLAN_FILE, SKIPPED, read_plan

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
            f"target × {1 + tolerance:g}), with the achieved density in brackets; — not run."
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
    if _misses(row):
        text += f" ⚠ ({row['density_mean']:.3f})"
    return text


def _density_cell(row: pd.Series) -> str:
    text = mean_std(row["density_mean"], row["density_std"], lambda v: f"{v:.3f}")
    return text + (" ⚠" if _misses(row) else "")


def _misses(row: pd.Series) -> bool:
    return not is_nan(row["meets_target"]) and not bool(row["meets_target"])


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


# ------------------------------------------------------------------------------- sweep plans
def find_plans(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(directory, plan)`` for every readable ``sweep_plan.yaml`` below ``root`` (itself included)."""
    root = Path(root)
    found = []
    for path in sorted(root.rglob(PLAN_FILE)):
        plan = read_plan(path.parent)
        if plan is not None:
            found.append((path.parent, plan))
    return found


def on_setting_models(
    table: pd.DataFrame, plans: Sequence[tuple[Path, Mapping[str, Any]]], root: str | Path
) -> pd.DataFrame:
    """Runs of a block sweep are compared on the sweep's model (``setting.model`` of its plan): a run of
    another model (implicit_fw on ``model=implicit`` in a compare_*_mlp sweep) moves into that model's
    table, with ``model=<its model>`` leading its variant. ``run_model`` keeps what every run trained."""
    table = table.copy()
    table.insert(table.columns.get_loc("model") + 1, "run_model", table["model"])
    for directory, plan in plans:
        model = (plan.get("setting") or {}).get("model")
        if not model:
            continue
        moved = _inside(table, directory, root) & table["model"].notna() & (table["model"] != model)
        table.loc[moved, "variant"] = [
            ", ".join(filter(None, [f"model={run_model}", variant]))
            for run_model, variant in zip(table.loc[moved, "run_model"], table.loc[moved, "variant"])
        ]
        table.loc[moved, "model"] = model
    return table


def fixed_keys(plans: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[str]:
    """The per-method settings of the block sweeps, which never make a variant."""
    return sorted({key for _, plan in plans for key in plan.get("fixed_keys") or []})


def sweep_lines(
    plans: Sequence[tuple[Path, Mapping[str, Any]]], root: str | Path, table: pd.DataFrame
) -> list[str]:
    """A ``## Sweep`` section per block sweep: command, jobs, wall time, blocks run, jobs not reached
    and blocks not run."""
    lines: list[str] = []
    for directory, plan in plans:
        where = _relative(directory, root)
        blocks = plan.get("blocks") or []
        run = [b for b in blocks if b.get("status") not in (SKIPPED, DESELECTED)]
        skipped = [b for b in blocks if b.get("status") == SKIPPED]
        deselected = [b for b in blocks if b.get("status") == DESELECTED]
        wall = plan.get("wall_seconds")
        train = table.loc[_inside(table, directory, root), "train_seconds"].sum()
        lines += [
            f"## Sweep{'' if where == '.' else f' {where}'}",
            "",
            f"`python train.py -m {' '.join(shlex.quote(str(a)) for a in plan.get('command_line') or [])}`",
            "",
            (
                f"{_jobs(plan.get('jobs', 0))}; wall time {_duration(wall) if wall is not None else 'unknown (interrupted or still running)'}"
                f" (started {plan.get('started') or '?'}, finished {plan.get('finished') or '—'}); "
                f"training time summed over its runs {_duration(train)}."
            ),
            "",
            "- Blocks run: "
            + (", ".join(f"{b['name']} ({_jobs(len(b.get('jobs') or []))})" for b in run) or "none")
            + ".",
        ]
        # An interrupted sweep leaves planned jobs without a run directory: say so, or the tables
        # read as if those blocks had run.
        reached = set(table.loc[_inside(table, directory, root), "run_dir"].astype(str))
        prefix = "" if where == "." else where + "/"
        unreached = [(b["name"], [j for j in b.get("jobs") or [] if f"{prefix}{j}" not in reached]) for b in run]
        unreached = [(name, jobs) for name, jobs in unreached if jobs]
        if unreached:
            lines.append(
                "- **Not reached** (planned, but the sweep stopped before them: no run directory): "
                + "; ".join(f"**{name}** ({_jobs(len(jobs))}: {', '.join(map(str, jobs))})" for name, jobs in unreached)
                + "."
            )
        if skipped:
            lines.append(
                "- **Not run** (optional blocks whose config did not exist when the sweep started): "
                + "; ".join(f"**{b['name']}** ({b.get('reason', '')})" for b in skipped)
                + "."
            )
        if deselected:
            lines.append(
                "- Left out by the command line: "
                + "; ".join(f"{b['name']} ({b.get('reason', '')})" for b in deselected)
                + "."
            )
        lines.append("")
    return lines


def _relative(directory: Path, root: str | Path) -> str:
    return directory.resolve().relative_to(Path(root).resolve()).as_posix()


def _inside(table: pd.DataFrame, directory: Path, root: str | Path) -> pd.Series:
    """Rows whose ``run_dir`` (relative to ``root``, as in results.csv) lies below ``directory``."""
    where = _relative(directory, root)
    return table["run_dir"].astype(str).str.startswith("" if where == "." else where + "/")


def _jobs(count: int) -> str:
    return f"{count} job{'' if count == 1 else 's'}"


def _duration(seconds: float) -> str:
    if is_nan(seconds):
        return "—"
    minutes, secs = divmod(round(float(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
    )
