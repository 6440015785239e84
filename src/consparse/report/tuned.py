"""The tuning of a tuned block sweep, as the report shows it: the choice on validation and its runs.

A tuned sweep (``hydra.sweeper.tune``, ``consparse.tuned_sweep``) searches a grid of one
hyperparameter per variant on the first seed, then runs the other seeds at the chosen value. The
report recomputes the choice from the runs' own results.json with ``consparse.tuning.select``, the
function the sweeper chose with, so the two agree by construction, and:

* the tables, summaries and plots use only the runs at the chosen value (the chosen value's
  search runs are the first seed of the final rows);
* the search runs at the other values are **tuning runs**: listed under "Tuning on validation"
  with their validation accuracy, never averaged into a table;
* per variant, the grid, the mean validation accuracy at each value and the value chosen.

Runs without a ``tuning`` record (an untuned sweep, stand-ins for runs that wrote no results.json)
are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from consparse.report.format import cell, first_line, markdown_table, percent
from consparse.report.table import relative, table_model
from consparse.tuning import SEARCH, TUNING_KEY, Candidate, Selection, same_value, select, selection_key

Pair = tuple[str, str]


@dataclass
class TuningSplit:
    """The runs of a sweep split by the tuning: ``kept`` for the tables, ``tuning_runs`` beside them."""

    kept: list[dict[str, Any]]
    tuning_runs: list[dict[str, Any]] = field(default_factory=list)
    selections: dict[tuple[str | None, str, str], Selection] = field(default_factory=dict)
    # (dataset, table model) of each selection, where its section goes.
    pairs: dict[tuple[str | None, str, str], Pair] = field(default_factory=dict)


def split_tuning(rows: Sequence[dict[str, Any]]) -> TuningSplit:
    """Keep the runs at each variant's chosen value (and every run without a tuning record)."""
    selections = select(rows)
    split = TuningSplit(kept=[], selections=selections)
    for row in rows:
        tuning = row.get(TUNING_KEY)
        if not isinstance(tuning, Mapping):
            split.kept.append(row)
            continue
        key = selection_key(row)
        chosen = selections.get(key)
        if tuning.get("phase") == SEARCH:
            split.pairs.setdefault(key, (str(row.get("dataset", "?")), str(table_model(row) or "?")))
        if chosen is None or same_value(float(tuning["value"]), chosen.chosen.value):
            split.kept.append(row)
        else:
            split.tuning_runs.append(row)
    return split


def selection_table(split: TuningSplit) -> pd.DataFrame:
    """One row per (setting, variant, key, grid value): mean validation accuracy, jobs, and whether chosen
    (``tuning.csv``)."""
    records = []
    for (setting, variant, key), selection in split.selections.items():
        for c in selection.candidates:
            records.append(
                {"setting": setting, "variant": variant, "key": key, "value": c.value, "factor": c.factor,
                 "val_accuracy_mean": c.mean, "n_runs": len(c.accuracies), "n_without_accuracy": c.failures,
                 "chosen": c is selection.chosen}
            )  # fmt: skip
    return pd.DataFrame.from_records(
        records, columns=["setting", "variant", "key", "value", "factor", "val_accuracy_mean", "n_runs",
                          "n_without_accuracy", "chosen"],
    )  # fmt: skip


def tuning_lines(split: TuningSplit, pair: Pair, root: Any = None) -> list[str]:
    """The "Tuning on validation" section of one (dataset, model); empty without a tuned sweep there."""
    keys = [key for key, where in split.pairs.items() if where == pair]
    if not keys:
        return []
    lines = ["", "### Tuning on validation", ""]
    for setting in sorted({key[0] for key in keys}, key=str):
        chosen = [split.selections[key] for key in keys if key[0] == setting]
        lines += _setting_lines(setting, chosen)
    runs = [row for row in split.tuning_runs if (str(row.get("dataset", "?")), str(table_model(row) or "?")) == pair]
    lines += ["", f"Tuning runs (search runs at the values not chosen; in no table, summary or plot): {len(runs)}."]
    if runs:
        header = ["run dir", "variant", "value", "target", "seed", "status", "val acc (%)"]
        lines += ["", *markdown_table(header, (_run_cells(row, root) for row in runs))]
    return lines


def _setting_lines(setting: str | None, selections: Sequence[Selection]) -> list[str]:
    factors = sorted({c.factor for s in selections for c in s.candidates})
    keys = sorted({s.key for s in selections})
    lines = [
        (
            f"{'Setting ' + setting if setting else 'These runs'}: {', '.join(f'`{k}`' for k in keys)} chosen per "
            "variant from a grid around its own default (the columns: the factors), on the first seed at every "
            "target of the variant; the selection used validation accuracy only (fewest failed runs first, a run "
            "that missed its target density counting as failed, then the mean over the others; ties go to the "
            "default), never test accuracy. The tables "
            "use only the runs at the chosen value (✔)."
        ),
        "",
    ]
    header = ["variant", "key", *(f"× {f:g}" for f in factors), "chosen"]
    rows = []
    for selection in sorted(selections, key=lambda s: s.variant):
        by_factor = {c.factor: c for c in selection.candidates}
        rows.append(
            [cell(selection.variant), cell(selection.key), *(_candidate_cell(by_factor.get(f), selection) for f in factors),
             f"{selection.chosen.value:g}"]
        )  # fmt: skip
    return [*lines, *markdown_table(header, rows), ""]


def _candidate_cell(candidate: Candidate | None, selection: Selection) -> str:
    if candidate is None:
        return "—"
    accuracy = "no val acc" if candidate.mean is None else f"{percent(candidate.mean)} %"
    failed = f", {candidate.failures} of {len(candidate.accuracies)} failed" if candidate.failures else ""
    mark = " ✔" if candidate is selection.chosen else ""
    return f"{candidate.value:g}: {accuracy}{failed}{mark}"


def _run_cells(row: Mapping[str, Any], root: Any) -> list[str]:
    target = row.get("target_density")
    accuracy = row.get("val_accuracy")
    status = str(row.get("status"))
    return [
        cell(relative(row.get("run_dir"), root) if root is not None else row.get("run_dir")),
        cell(row.get("variant")),
        f"{row[TUNING_KEY]['value']:g}",
        "—" if target is None else f"{target:g}" if isinstance(target, (int, float)) else cell(target),
        str(row.get("seed", "?")),
        status if status == "completed" else cell(f"{status}: {first_line(row.get('error') or '')}"),
        "—" if not isinstance(accuracy, (int, float)) else percent(accuracy),
    ]
