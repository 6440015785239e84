"""The run table (``results.csv``): one flat row per run, with the label that tells runs of one
method apart (``variant``) and the model whose table each run joins.

* **Variant label.** Tells runs of one method apart when they differ by something other than the
  seed or the target, e.g. ``method.penalty=0.01`` for ``l0_penalty``, which takes no target. By
  default it is made of the run's recorded ``overrides`` whose value is not the same in every
  completed run of its arm (a run without the override counts as a different value): in a
  comparison (``setting.name``) an arm is one results.json ``variant`` (a block of a block sweep),
  outside one all runs form a single arm. Left out: the seed, the group choices that have a column
  of their own, ``resume``, ``variant``, ``setting.*`` and ``hydra.*``; ``group_by`` names the keys
  explicitly instead (override keys or flattened ``results.csv`` columns). A block named otherwise
  than its method leads the label.
* **Table model.** A run whose ``setting`` names a model is compared in that model's table
  (implicit_fw on ``model=implicit`` in a compare_*_mlp sweep joins the mlp's), with
  ``model=<its model>`` in its label; ``run_model`` keeps what every run trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from consparse.report.collect import COMPLETED
from consparse.report.format import is_nan
from consparse.report.results import COUNT_KEYS, CURVE_KEYS, NUMBER_KEYS

# results.csv columns, in this order; further scalar keys follow them (see ``runs_table``).
RUN_COLUMNS = (
    "method",
    "model",
    "run_model",
    "dataset",
    "seed",
    "status",
    "target_density",
    "variant",
    "test_accuracy",
    "val_accuracy",
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
# Per-layer densities, the method node and curves are too wide for one row per run (curves get their
# own csv), and a traceback is dozens of lines in every failed row; results.json keeps all four.
UNFLATTENED_KEYS = ("per_layer_density", "method_config", "compression_curve", "traceback")
# Overrides that never make a variant: the seed is averaged over, these groups have their own
# columns, resuming a run does not change what it computes, and the arm is grouped on already.
NON_VARIANT_OVERRIDES = ("seed", "method", "model", "dataset", "method.target_density", "resume", "variant", "tuning")
NON_VARIANT_PREFIXES = ("hydra.", "setting.")


def runs_table(
    rows: Sequence[Mapping[str, Any]], root: str | Path | None = None, group_by: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per run (the content of ``results.csv``): ``RUN_COLUMNS`` first, then the other
    top-level scalars, then flattened mappings (``method_metrics.*``, ``latency.*``), ``overrides``
    last. ``model`` is the table's model, ``run_model`` the run's (module docstring)."""
    records = []
    for row, variant in zip(rows, variant_labels(rows, group_by)):
        flat = flatten_run(row, root)
        flat["run_model"] = row.get("model")
        flat["model"] = table_model(row)
        flat["variant"] = variant
        records.append(flat)
    frame = pd.DataFrame.from_records(records)
    present = set(frame.columns)
    top_level = sorted(c for c in present if c not in RUN_COLUMNS and "." not in c and c != "overrides")
    nested = sorted(c for c in present if "." in c)
    columns = [*RUN_COLUMNS, *top_level, *nested, *(["overrides"] if "overrides" in present else [])]
    frame = frame.reindex(columns=columns)
    for column in NUMBER_KEYS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in COUNT_KEYS:
        # Failed runs leave holes, which would turn counts into floats (27030.0) in results.csv.
        if column in frame and (frame[column].dropna() % 1 == 0).all():
            frame[column] = frame[column].round().astype("Int64")
    frame["variant"] = frame["variant"].fillna("")
    return frame


def table_model(row: Mapping[str, Any]) -> Any:
    """The model whose table a run joins: its setting's, else its own."""
    setting = row.get("setting")
    return (setting.get("model") if isinstance(setting, Mapping) else None) or row.get("model")


def variant_labels(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str] | None = None) -> list[str]:
    """The label of each run, e.g. ``"method.penalty=0.01"`` (empty when nothing tells it apart; the
    rules are in the module docstring). Only completed runs decide which overrides differ, because
    they make the table's rows; failed runs get the same keys, so that they count beside their group."""
    parsed = [parse_overrides(row.get("overrides")) for row in rows]
    if group_by is not None:
        keys_of = {i: list(group_by) for i in range(len(rows))}
    else:
        keys_of = _differing_overrides(rows, parsed)
    labels = []
    for i, (row, overrides) in enumerate(zip(rows, parsed)):
        flat = flatten_run(row) if group_by is not None else {}
        parts = [*_arm_parts(row)]
        for key in keys_of[i]:
            value = overrides.get(key, flat.get(key))
            if value is not None and not is_nan(value):
                parts.append(f"{key}={value}")
        labels.append(", ".join(parts))
    return labels


def _differing_overrides(rows: Sequence[Mapping[str, Any]], parsed: Sequence[dict[str, str]]) -> dict[int, list[str]]:
    """For each run, the overrides whose values differ between the completed runs of its arm."""
    arms: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        arms.setdefault(_arm(row), []).append(i)
    keys_of: dict[int, list[str]] = {}
    for members in arms.values():
        deciding = [parsed[i] for i in members if rows[i].get("status") == COMPLETED] or [parsed[i] for i in members]
        candidates = sorted({key for overrides in deciding for key in overrides if _may_make_variant(key)})
        keys = [key for key in candidates if len({overrides.get(key) for overrides in deciding}) > 1]
        keys_of.update({i: keys for i in members})
    return keys_of


def _arm(row: Mapping[str, Any]) -> tuple:
    """Runs of a comparison are compared within their arm, so that a block's per-method setting
    (``method.finetune_epochs``, set in every magnitude run and only there) makes no variant; runs
    outside a comparison (a plain multirun) all form one arm, where any differing override counts."""
    setting = row.get("setting") if isinstance(row.get("setting"), Mapping) else {}
    name = setting.get("name")
    return (name, row.get("variant") or row.get("method")) if name else (None, None)


def _arm_parts(row: Mapping[str, Any]) -> list[str]:
    """What a run's own results say tells it apart: a block named otherwise than its method, and
    a model other than its setting's."""
    parts = []
    variant, method = row.get("variant"), row.get("method")
    if variant and method and variant != method:
        parts.append(str(variant))
    model = table_model(row)
    if row.get("model") is not None and model != row.get("model"):
        parts.append(f"model={row['model']}")
    return parts


def _may_make_variant(key: str) -> bool:
    return key not in NON_VARIANT_OVERRIDES and not key.startswith(NON_VARIANT_PREFIXES)


def parse_overrides(overrides: Sequence[str] | None) -> dict[str, str]:
    """``{key: value as written}`` for the override strings a run recorded (``~key`` maps to ``"~"``,
    ``+key`` and ``++key`` to ``key``)."""
    parsed = {}
    for override in overrides or ():
        text = str(override)
        if text.startswith("~"):
            parsed[text[1:].split("=", 1)[0]] = "~"
        elif "=" in text:
            key, value = text.lstrip("+").split("=", 1)
            parsed[key] = value
    return parsed


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
            flat[key] = relative(value, root)
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


def curve_points(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> pd.DataFrame:
    """One row per ``compression_curve`` point of the completed runs, with the run's identity."""
    identity = ["dataset", "model", "method", "target_density", "variant", "seed"]
    records = []
    for row, variant in zip(rows, variants):
        if row.get("status") != COMPLETED:
            continue
        for point in row.get("compression_curve") or []:
            if isinstance(point, Mapping):
                records.append(
                    {
                        "dataset": str(row.get("dataset", "?")),
                        "model": str(table_model(row) or "?"),
                        "method": str(row.get("method", "?")),
                        "target_density": row.get("target_density"),
                        "variant": variant,
                        "seed": row.get("seed"),
                        **{key: point.get(key) for key in CURVE_KEYS},
                    }
                )
    return pd.DataFrame.from_records(records, columns=[*identity, *CURVE_KEYS])


def relative(path: Any, root: str | Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
