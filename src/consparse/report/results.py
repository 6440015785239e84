"""The ``results.json`` contract: one file per run, in the run directory.

``Results`` is the one description of its keys: ``consparse.train`` writes through it and the report
reads through it, so the key lists (what every run carries, what a completed run adds, which
columns are numbers) are its fields and nowhere else. Keys beyond the fields are kept in ``extra``
and written back unchanged (the design welcomes more keys).

A run says what it belongs to, so that the report never works it out afterwards: ``setting`` (the
comparison it is part of: ``name`` and the ``model`` whose table it joins, set by the
``compare_*`` presets; nulls outside one), ``variant`` (its arm: the block of a block sweep, else
the method's name), ``overrides`` (the job's command-line overrides) and ``method_config`` (the
resolved ``method`` node). Files written before these keys existed (``schema_version`` 1) are
refused by the report with one line (``consparse.report.collect``).

Written atomically (temporary file, then rename) so that an interrupted write never leaves a
truncated file beside a previous good one, with the user's umask like every other file of the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

from consparse.atomic_write import write_atomically
from consparse.curve_kinds import CURVE_KINDS

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 2
# failed: an error; diverged: the training loss stopped being finite; interrupted: stopped by a signal
# (a rerun in the same directory continues). All three say why in ``error``.
STATUSES = ("completed", "failed", "diverged", "interrupted")
# Marks a field that a completed run must carry (it may hold null, e.g. ``target_density`` of dense).
_COMPLETED = {"completed": True}


@dataclass
class CurvePoint:
    """One point of ``compression_curve``: the final model pruned or decomposed without retraining."""

    kind: str  # one of CURVE_KINDS
    amount: float  # fraction removed
    test_accuracy: float
    density: float
    params: int
    macs: int


CURVE_KEYS = tuple(f.name for f in fields(CurvePoint))


@dataclass
class Results:
    """One run's ``results.json`` (the table of keys: docs/architecture.md, "results.json")."""

    # What ran, on every status.
    method: str
    model: str
    dataset: str
    seed: int
    status: str
    setting: dict[str, Any]
    variant: str
    overrides: list[str] = field(default_factory=list)
    method_config: dict[str, Any] = field(default_factory=dict)
    # A tuned block sweep's record of the job (consparse.tuning): key, phase, value, factor, grid, factors.
    tuning: dict[str, Any] | None = None
    target_density: float | list[float] | None = field(default=None, metadata=_COMPLETED)
    # Why a run did not complete (traceback null for consparse's own errors, e.g. bad input).
    error: str | None = None
    traceback: str | None = None
    # What a completed run measured on its deployed model.
    test_accuracy: float | None = field(default=None, metadata=_COMPLETED)
    # The same on the validation split held out of the training set (null without one, val_fraction 0):
    # what a sweep tunes on, so that the test split plays no part in any choice. Not required: files
    # written before it existed are read as they are.
    val_accuracy: float | None = None
    density: float | None = field(default=None, metadata=_COMPLETED)
    per_layer_density: dict[str, float] | None = field(default=None, metadata=_COMPLETED)
    params: int | None = field(default=None, metadata=_COMPLETED)
    params_total: int | None = None
    dense_params: int | None = field(default=None, metadata=_COMPLETED)
    macs: int | None = field(default=None, metadata=_COMPLETED)
    dense_macs: int | None = field(default=None, metadata=_COMPLETED)
    latency_ms: float | None = field(default=None, metadata=_COMPLETED)
    dense_latency_ms: float | None = field(default=None, metadata=_COMPLETED)
    latency: dict[str, Any] | None = field(default=None, metadata=_COMPLETED)
    # Per batch size ("1", "64"): the deployed and the dense model's ms, measured side by side.
    latency_by_batch: dict[str, dict[str, float]] | None = None
    # N:M runs only: the pattern, weights that break it, and the GPU's semi-structured deployment.
    nm: dict[str, Any] | None = None
    compression_curve: list[dict[str, Any]] | None = field(default=None, metadata=_COMPLETED)
    method_metrics: dict[str, Any] | None = field(default=None, metadata=_COMPLETED)
    train_seconds: float | None = field(default=None, metadata=_COMPLETED)
    epochs: int | None = field(default=None, metadata=_COMPLETED)
    export: str | None = field(default=None, metadata=_COMPLETED)
    warnings: list[str] | None = None
    hardware: dict[str, Any] | None = None
    phase_seconds: dict[str, float] | None = None
    # Keys beyond these fields, kept as they are.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The file's content: ``schema_version``, the fields (a run that did not complete leaves out the
        measurements it does not have), then ``extra``; plain JSON values only."""
        payload: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        completed = (*COMPLETED_KEYS, *NULLABLE_COMPLETED_KEYS)
        always = (*ALWAYS_KEYS, *(completed if self.status == "completed" else FAILURE_KEYS))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and (value is not None or f.name in always):
                payload[f.name] = value
        return to_jsonable({**payload, **self.extra})

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, measurements: bool = True) -> Results:
        """Results from a file's content, validated (without ``measurements``: only what ran, as the
        report reads files that lack a figure); unknown keys go to ``extra``."""
        validate_results(data, measurements=measurements)
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known and k != "schema_version"}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _types(hint: Any) -> set[Any]:
    return set(get_args(hint) or (hint,))


# Keys every results.json carries and those a completed run adds. Written even when null or empty:
# ALWAYS_KEYS, and COMPLETED_KEYS or FAILURE_KEYS (``traceback`` is null for consparse's own errors).
REQUIRED_KEYS = tuple(f.name for f in fields(Results) if _required(f))
COMPLETED_KEYS = tuple(f.name for f in fields(Results) if f.metadata.get("completed"))
ALWAYS_KEYS = (*REQUIRED_KEYS, "overrides", "method_config", "target_density")
FAILURE_KEYS = ("error", "traceback")
# Written by a completed run even when null, but not required of a file (older ones lack them).
NULLABLE_COMPLETED_KEYS = ("val_accuracy",)
# Fields that hold numbers, for the report's numeric columns; ``COUNT_KEYS`` hold whole numbers.
_HINTS = get_type_hints(Results)
NUMBER_KEYS = tuple(name for name, hint in _HINTS.items() if _types(hint) & {int, float})
COUNT_KEYS = tuple(name for name, hint in _HINTS.items() if int in _types(hint))


class ResultsSchemaError(ValueError):
    """A results dictionary does not follow the contract."""


def validate_results(results: Mapping[str, Any], *, measurements: bool = True) -> None:
    """Raise ResultsSchemaError naming every missing or malformed key (of a completed run's
    measurements too, unless ``measurements`` is false)."""
    problems: list[str] = [f"missing key '{key}'" for key in REQUIRED_KEYS if key not in results]
    status = results.get("status")
    if status not in STATUSES:
        problems.append(f"status must be one of {STATUSES}, got {status!r}")
    if status not in ("completed", None) and not results.get("error"):
        problems.append(f"a {status} run must say why in 'error'")
    if status == "completed" and measurements:
        problems += [f"missing key '{key}'" for key in COMPLETED_KEYS if key not in results]
        problems += _measurement_problems(results)
    if problems:
        raise ResultsSchemaError("results.json does not follow the contract: " + "; ".join(problems))


def _measurement_problems(results: Mapping[str, Any]) -> list[str]:
    problems = []
    for key in ("test_accuracy", "density", "val_accuracy"):
        value = results.get(key)
        if key == "val_accuracy" and value is None:
            continue
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 + 1e-9:
            problems.append(f"'{key}' must be a fraction in [0, 1], got {value!r}")
    for i, point in enumerate(results.get("compression_curve") or []):
        missing = [k for k in CURVE_KEYS if k not in point]
        if missing:
            problems.append(f"compression_curve[{i}] lacks {missing}")
        elif point["kind"] not in CURVE_KINDS:
            problems.append(f"compression_curve[{i}].kind must be one of {CURVE_KINDS}, got {point['kind']!r}")
    if not isinstance(results.get("method_metrics"), Mapping):
        problems.append("'method_metrics' must be a mapping")
    return problems


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy scalars, paths and non-finite floats into plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # lists, tuples, ListConfig
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors and numpy values
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(run_dir: str | Path, results: Results | Mapping[str, Any]) -> Path:
    """Validate and write ``results.json`` into ``run_dir`` atomically; returns its path."""
    return write_results_file(Path(run_dir) / RESULTS_FILE, results)


def write_results_file(path: str | Path, results: Results | Mapping[str, Any]) -> Path:
    """Validate ``results`` against the contract and write them to ``path`` atomically; returns the path."""
    if isinstance(results, Results):
        payload = results.to_json()
    else:
        payload = {"schema_version": SCHEMA_VERSION, **to_jsonable(dict(results))}
    validate_results(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_results(path: str | Path) -> dict[str, Any]:
    """Read one results.json (a path to the file or to its run directory) as it is on disk."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    with open(path) as handle:
        return json.load(handle)
