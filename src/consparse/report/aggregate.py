"""Aggregating the ``results.json`` files of a sweep into ``results.csv``, ``results.md`` and plots.

Choices a reader of the report should know (also printed in the report's legend):

* **Groups.** One table per (dataset, model). Within it one row per (method, target density,
  variant), averaged over seeds. The *variant* tells runs of one method apart when they differ by
  something other than the seed or the target, e.g. ``method.penalty=0.01`` for ``l0_penalty``,
  which takes no target. By default it is made of the Hydra overrides (``.hydra/overrides.yaml``)
  whose value is not the same in every run collected, leaving out the seed, the group choices that
  already have a column and ``resume``; ``group_by`` names the keys explicitly instead (override keys
  or flattened ``results.csv`` columns).
* **Mean ± std.** Sample standard deviation (ddof 1) over the completed seeds of a group. With a
  single seed the std is undefined: ``summary.csv`` leaves it empty and the markdown shows the value
  alone, so that a missing spread is never mistaken for a measured zero.
* **Density tolerance.** Relative, default 5 %: a group meets its target when its mean achieved
  density is at most ``target * (1 + tolerance)``. Relative, because the targets studied here go
  down to 0.01, where an absolute 0.02 would accept three times the allowed weights. One-sided,
  because a model sparser than asked is within budget (what it costs shows in its accuracy); the
  signed deviation is shown either way.
* **Best at a target.** The highest mean test accuracy among the groups with that target density
  that meet it; groups without a target (dense, ``l0_penalty``) do not compete. When no group meets
  a target the report says so.
* **Failures.** Runs whose status is not ``completed``, ``results.json`` files that cannot be read
  and Hydra job directories without a ``results.json`` (crashed, killed or still running) are all
  listed in their own section with the first line of their error, and counted beside their group.
* **Plots.** One figure of four panels per (dataset, model), ``pareto.png``: test accuracy against
  achieved density, params, MACs and latency of the deployed model, one line per method (mean with
  std error bars on both axes, a marker per group). One figure keeps the four views of the same
  runs side by side, which is how they are compared. ``compression_curves.png`` shows the
  ``compression_curve`` entries (pruning or decomposition without retraining), one panel per kind:
  accuracy against density for ``unstructured``, against params for ``filter`` and ``lowrank``.
  With several (dataset, model) pairs in one directory the files are suffixed
  ``_<dataset>_<model>``. The x axis is logarithmic when its values span a factor of 10 or more.
* **Comparisons and block sweeps** (``consparse.report.compare``): where two or more rows share a
  target, matrices of accuracy and density by target, who falls short of whom, and where the rows
  without a target land; rows "pruned without retraining" from the curves of runs without a target.
  Below a block sweep's ``sweep_plan.yaml`` its per-method settings make no variants, runs of
  another model join the sweep's table (``model=...`` in their variant), and a "Sweep" section
  gives the command, the wall time and the blocks not run.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from json import JSONDecodeError
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from consparse.errors import ConsparseError
from consparse.report.compare import (
    CURVE_VARIANT,
    comparison_lines,
    curve_rows,
    find_plans,
    fixed_keys,
    on_setting_models,
    sweep_lines,
)
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
from consparse.report.results import RESULTS_FILE, read_results
from consparse.validation import check_range

DEFAULT_TOLERANCE = 0.05
RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
CURVES_CSV = "compression_curves.csv"
REPORT_MD = "results.md"
PARETO_PNG = "pareto.png"
CURVES_PNG = "compression_curves.png"

COMPLETED = "completed"
MISSING = "missing"
IDENTITY = ("dataset", "model", "method", "target_density", "variant")
# results.csv columns, in this order; further scalar keys follow them (see ``runs_table``).
RUN_COLUMNS = (
    "method",
    "model",
    "dataset",
    "seed",
    "status",
    "target_density",
    "variant",
    "test_accuracy",
    "density",
    "params",
    "dense_params",
    "macs",
    "dense_macs",
    "latency_ms",
    "dense_latency_ms",
    "train_seconds",
    "epochs",
    "run_dir",
    "error",
)
NUMERIC_COLUMNS = (
    "seed",
    "target_density",
    "test_accuracy",
    "density",
    "params",
    "dense_params",
    "macs",
    "dense_macs",
    "latency_ms",
    "dense_latency_ms",
    "train_seconds",
    "epochs",
)
COUNT_COLUMNS = ("seed", "params", "dense_params", "macs", "dense_macs", "epochs")
# Figures averaged over seeds in the summary.
SUMMARY_METRICS = ("test_accuracy", "density", "params", "macs", "latency_ms", "train_seconds")
DENSE_METRICS = ("dense_params", "dense_macs", "dense_latency_ms")
# Per-layer densities and curves are too wide for one row per run (curves get their own csv), and a
# traceback is dozens of lines in every failed row; results.json keeps all three.
UNFLATTENED_KEYS = ("per_layer_density", "compression_curve", "traceback")
# Overrides that never make a variant: the seed is averaged over, these groups have their own
# columns, and resuming a run does not change what it computes.
NON_VARIANT_OVERRIDES = ("seed", "method", "model", "dataset", "method.target_density", "resume")
# Where a job's saved config (.hydra/config.yaml) names what ran; without the ``.name`` suffix the
# same path is the override key (``method=l0``, ``method.target_density=0.05``).
IDENTITY_CONFIG_PATHS = {
    "method": "method.name",
    "model": "model.name",
    "dataset": "dataset.name",
    "seed": "seed",
    "target_density": "method.target_density",
}


class NoResultsError(ConsparseError, FileNotFoundError):
    """The directory holds no ``results.json`` to aggregate."""


# ----------------------------------------------------------------------------------- collecting
def collect_results(root: str | Path) -> list[dict[str, Any]]:
    """Read every ``results.json`` below ``root``, plus Hydra job directories that lack one.

    Each row is the run's results with ``run_dir`` (absolute) added, and ``overrides`` (the list in
    ``.hydra/overrides.yaml``) when that file exists. A file that cannot be read, or a job directory
    without results, becomes a row with status ``failed`` or ``missing`` and an ``error``; its
    method, model, dataset, seed and target are taken from ``.hydra/config.yaml`` where possible.

    Raises NoResultsError when ``root`` holds no ``results.json`` at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoResultsError(f"no results.json found below {root}: it is not a directory")
    result_dirs = {path.parent for path in root.rglob(RESULTS_FILE) if path.is_file()}
    job_dirs = {path.parent.parent for path in root.rglob("overrides.yaml") if path.parent.name == ".hydra"}
    if not result_dirs:
        unfinished = f" ({len(job_dirs)} Hydra job directories without one)" if job_dirs else ""
        raise NoResultsError(f"no results.json found below {root}{unfinished}")
    return [_read_run(run_dir, run_dir in result_dirs) for run_dir in sorted(result_dirs | job_dirs, key=_natural_key)]


def _read_run(run_dir: Path, has_results: bool) -> dict[str, Any]:
    row: dict[str, Any]
    if not has_results:
        row = {
            "status": MISSING,
            "error": "no results.json: the job crashed or was killed before writing it, or is still running",
        }
    else:
        try:
            row = read_results(run_dir)
        except (OSError, UnicodeDecodeError, JSONDecodeError) as exc:
            row = {"status": "failed", "error": f"could not read {RESULTS_FILE}: {exc}"}
        if not isinstance(row, dict):
            row = {"status": "failed", "error": f"{RESULTS_FILE} holds a {type(row).__name__}, not an object"}
    overrides = _read_overrides(run_dir)
    if overrides is not None:
        row["overrides"] = overrides
    row["run_dir"] = str(run_dir.resolve())
    _fill_identity(row, run_dir)
    return row


def _read_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        overrides = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(item) for item in overrides] if isinstance(overrides, list) else None


def _fill_identity(row: dict[str, Any], run_dir: Path) -> None:
    """Fill what ran (method, model, ...) from the job's saved config, then from its overrides,
    where the results do not say (a failed or missing run may carry little more than an error)."""
    missing = {key: path for key, path in IDENTITY_CONFIG_PATHS.items() if row.get(key) is None}
    config_path = run_dir / ".hydra" / "config.yaml"
    if missing and config_path.is_file():
        try:
            config = OmegaConf.load(config_path)
        except (OSError, yaml.YAMLError, ValueError):
            config = None
        for key, path in list(missing.items()):
            value = None if config is None else OmegaConf.select(config, path, default=None, throw_on_resolution_failure=False)
            if value is not None and not OmegaConf.is_config(value):
                row[key] = value
                del missing[key]
    overrides = parse_overrides(row.get("overrides"))
    for key, path in missing.items():
        override = path.removesuffix(".name")
        if override in overrides and overrides[override] != "~":
            row[key] = yaml.safe_load(overrides[override])


def _natural_key(path: Path) -> tuple:
    """Sort job directories 0, 1, ..., 10 rather than 0, 1, 10, 2."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


# ------------------------------------------------------------------------------- the run table
def parse_overrides(overrides: Sequence[str] | None) -> dict[str, str]:
    """``{key: value as written}`` for Hydra override strings (``~key`` deletions map to ``"~"``)."""
    if not overrides:
        return {}
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return {}
    return {o.key_or_group: "~" if o.is_delete() else o.get_value_element_as_str() for o in parsed}


def run_variants(
    rows: Sequence[Mapping[str, Any]], group_by: Sequence[str] | None = None, fixed: Sequence[str] = ()
) -> list[str]:
    """The variant label of each run, e.g. ``"method.penalty=0.01"`` (empty when nothing differs).

    Without ``group_by``: the overrides whose value differs between the completed runs (a run
    without the override counts as a different value), leaving out ``NON_VARIANT_OVERRIDES``,
    ``fixed`` (a block sweep's per-method settings, see ``consparse.sweeper.SweepPlan.fixed_keys``)
    and ``hydra.*``. Only completed runs decide, because they make the table's rows; failed runs are
    labelled with the same keys so that they are counted beside their group. With ``group_by``:
    those keys, looked up in the overrides, then in the flattened run.
    """
    parsed = [parse_overrides(row.get("overrides")) for row in rows]
    if group_by is None:
        deciding = [o for row, o in zip(rows, parsed) if row.get("status") == COMPLETED] or parsed
        candidates = sorted(
            {key for overrides in deciding for key in overrides if _may_make_variant(key) and key not in fixed}
        )
        keys = [key for key in candidates if len({overrides.get(key) for overrides in deciding}) > 1]
    else:
        keys = list(group_by)
    labels = []
    for row, overrides in zip(rows, parsed):
        flat = flatten_run(row) if group_by is not None else {}
        parts = []
        for key in keys:
            value = overrides.get(key, flat.get(key))
            if value is not None and not is_nan(value):
                parts.append(f"{key}={value}")
        labels.append(", ".join(parts))
    return labels


def _may_make_variant(key: str) -> bool:
    return key not in NON_VARIANT_OVERRIDES and not key.startswith("hydra.")


def flatten_run(row: Mapping[str, Any], root: str | Path | None = None) -> dict[str, Any]:
    """One run as flat scalars: nested mappings become ``key.subkey`` columns, lists are left out
    (except ``overrides``, joined by spaces), ``run_dir`` is made relative to ``root`` if given."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key in UNFLATTENED_KEYS:
            continue
        if key == "overrides":
            flat[key] = " ".join(value) if isinstance(value, list) else value
        elif key == "run_dir" and root is not None:
            flat[key] = _relative(value, root)
        elif isinstance(value, Mapping):
            flat.update(_flatten_mapping(value, key))
        elif _is_scalar(value):
            flat[key] = value
    return flat


def _flatten_mapping(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_mapping(value, name))
        elif _is_scalar(value):
            flat[name] = value
    return flat


def runs_table(
    rows: Sequence[Mapping[str, Any]],
    root: str | Path | None = None,
    group_by: Sequence[str] | None = None,
    fixed: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per run (the content of ``results.csv``): ``RUN_COLUMNS`` first, then the other
    top-level scalars, then flattened mappings (``method_metrics.*``, ``latency.*``), ``overrides``
    last. ``group_by`` and ``fixed`` as in ``run_variants``."""
    records = []
    for row, variant in zip(rows, run_variants(rows, group_by, fixed)):
        flat = flatten_run(row, root)
        flat["variant"] = variant
        records.append(flat)
    frame = pd.DataFrame.from_records(records)
    present = set(frame.columns)
    top_level = sorted(c for c in present if c not in RUN_COLUMNS and "." not in c and c != "overrides")
    nested = sorted(c for c in present if "." in c)
    columns = [*RUN_COLUMNS, *top_level, *nested, *(["overrides"] if "overrides" in present else [])]
    frame = frame.reindex(columns=columns)
    for column in NUMERIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in COUNT_COLUMNS:
        # Failed runs leave holes, which would turn counts into floats (27030.0) in results.csv.
        if (frame[column].dropna() % 1 == 0).all():
            frame[column] = frame[column].round().astype("Int64")
    frame["variant"] = frame["variant"].fillna("")
    return frame


# ---------------------------------------------------------------------------------- the summary
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
    ``meets_target`` (NA without a target) and ``best`` (see the module docstring).
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
    """Add ``density_vs_target``, ``meets_target`` and ``best`` to summary rows and sort them; rows
    added after ``summarise_table`` (e.g. ``consparse.report.compare.curve_rows``) are judged with the rest."""
    check_range("report.tolerance", tolerance, 0.0)
    summary = summary.reset_index(drop=True)
    summary["target_density"] = pd.to_numeric(summary["target_density"])
    summary["density_vs_target"] = (summary["density_mean"] - summary["target_density"]) / summary["target_density"]
    has_target = summary["target_density"].notna()
    meets = summary["density_mean"] <= summary["target_density"] * (1.0 + tolerance) + 1e-12
    summary["meets_target"] = meets.astype("boolean").where(has_target, pd.NA)
    summary["best"] = _best_at_target(summary)
    order = ["dataset", "model", "target_density", "method", "variant", "density_mean"]
    return summary.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)


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


def curve_points(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> pd.DataFrame:
    """One row per ``compression_curve`` point of the completed runs, with the run's identity."""
    records = []
    for row, variant in zip(rows, variants):
        if row.get("status") != COMPLETED:
            continue
        for point in row.get("compression_curve") or []:
            if isinstance(point, Mapping):
                records.append(
                    {
                        "dataset": str(row.get("dataset", "?")),
                        "model": str(row.get("model", "?")),
                        "method": str(row.get("method", "?")),
                        "target_density": row.get("target_density"),
                        "variant": variant,
                        "seed": row.get("seed"),
                        **{key: point.get(key) for key in ("kind", "amount", "test_accuracy", "density", "params", "macs")},
                    }
                )
    return pd.DataFrame.from_records(
        records,
        columns=["dataset", "model", "method", "target_density", "variant", "seed", "kind", "amount", "test_accuracy", "density", "params", "macs"],
    )


def summarise_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of each curve point, per (dataset, model, method, target, variant, kind, amount)."""
    keys = ["dataset", "model", "method", "target_density", "variant", "kind", "amount"]
    values = ["test_accuracy", "density", "params", "macs"]
    numeric = points.copy()
    for column in ["target_density", "amount", *values]:
        numeric[column] = pd.to_numeric(numeric[column], errors="coerce")
    grouped = numeric.groupby(keys, dropna=False, sort=True)[values]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    summary["n_seeds"] = grouped.size()
    return summary.reset_index()


def _format_row(row: pd.Series, show_variant: bool) -> list[str]:
    decimals = significant_decimals(row["latency_ms_mean"])
    seconds = significant_decimals(row["train_seconds_mean"])
    target = row["target_density"]
    deviation = row["density_vs_target"]
    if is_nan(target) or is_nan(deviation):
        versus = ""
    else:
        versus = f"{100 * deviation:+.1f} %" + ("" if row["meets_target"] else " ⚠")
    count = str(row["n_seeds"]) + (f" (+{row['n_failed']} failed)" if row["n_failed"] else "")
    cells = [
        row["method"],
        *([row["variant"] or "—"] if show_variant else []),
        "—" if is_nan(target) else f"{target:.3f}",
        mean_std(row["density_mean"], row["density_std"], lambda v: f"{v:.3f}"),
        versus,
        mean_std(row["test_accuracy_mean"], row["test_accuracy_std"], percent),
        mean_std(row["params_mean"], row["params_std"], format_count),
        mean_std(row["macs_mean"], row["macs_std"], format_count),
        mean_std(row["latency_ms_mean"], row["latency_ms_std"], lambda v: f"{v:.{decimals}f}"),
        mean_std(row["train_seconds_mean"], row["train_seconds_std"], lambda v: f"{v:.{seconds}f}"),
        count,
        "★" if row["best"] else "",
    ]
    return [cell(c) for c in cells]


# ------------------------------------------------------------------------------------ markdown
def render_markdown(
    table: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    title: str,
    tolerance: float,
    images: Mapping[tuple[str, str], Sequence[tuple[str, str]]] | None = None,
    sweep: Sequence[str] = (),
) -> str:
    """The report: title, counts, ``sweep`` (lines describing block sweeps), legend, one table per
    (dataset, model) with its side-by-side comparison (``consparse.report.compare``) and plots, failures.

    ``images`` maps (dataset, model) to ``(caption, relative path)`` pairs to embed under its table.
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
        ),
        "",
        *sweep,
        *_legend(tolerance),
        *([CURVE_LEGEND] if from_curves else []),
    ]
    for (dataset, model), group in summary.groupby(["dataset", "model"], sort=True):
        lines += ["", f"## {dataset} / {model}", ""]
        dense = _dense_reference(table, dataset, model)
        if dense:
            lines += [dense, ""]
        show_variant = bool((group["variant"] != "").any())
        header = [
            "method",
            *(["variant"] if show_variant else []),
            "target",
            "density",
            "vs target",
            "test acc (%)",
            "params",
            "MACs",
            "latency (ms)",
            "train (s)",
            "n",
            "best",
        ]
        lines += markdown_table(header, (_format_row(row, show_variant) for _, row in group.iterrows()))
        missed = _targets_missed(group, tolerance)
        if missed:
            lines += ["", *missed]
        lines += comparison_lines(group, tolerance)
        for caption, path in (images or {}).get((dataset, model), ()):
            lines += ["", f"![{caption}]({path})"]
    lines += ["", *_failures_section(table)]
    return "\n".join(lines) + "\n"


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
            f"{100 * tolerance:g} % (relative; sparser than asked is within budget)."
        ),
        "- **test acc**: top-1 accuracy on the test split, in %.",
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


# -------------------------------------------------------------------------------------- writing
def write_report(
    root: str | Path,
    out_dir: str | Path | None = None,
    *,
    group_by: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Path]:
    """Aggregate every run below ``root`` and write the report files into ``out_dir`` (default ``root``).

    Returns the written paths by name: ``results_csv``, ``summary_csv``, ``markdown``, and when
    there is something to draw ``curves_csv``, ``pareto`` / ``compression_curves`` (one pair of
    (dataset, model)) or ``pareto_<dataset>_<model>`` / ``compression_curves_<dataset>_<model>``.
    Raises NoResultsError when ``root`` holds no ``results.json``.
    """
    from consparse.report.plots import plot_compression_curves, plot_pareto

    check_range("report.tolerance", tolerance, 0.0)
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_results(root)
    plans = find_plans(root)
    table = on_setting_models(runs_table(rows, root, group_by, fixed=fixed_keys(plans)), plans, root)
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

    pairs = sorted(summary.groupby(["dataset", "model"]).groups)
    images: dict[tuple[str, str], list[tuple[str, str]]] = {}
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

    markdown = render_markdown(
        table,
        summary,
        title=f"consparse results: {root.resolve().name}",
        tolerance=tolerance,
        images=images,
        sweep=sweep_lines(plans, root, table),
    )
    paths["markdown"] = out / REPORT_MD
    paths["markdown"].write_text(markdown)
    return paths


# ------------------------------------------------------------------------------------- helpers
def _relative(path: Any, root: str | Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
