"""The ``results.json`` contract: one file per run, in the run directory.

Written atomically (temporary file, then rename) so that an interrupted write never leaves a
truncated file beside a previous good one, with the user's umask like every other file of the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from consparse.atomic_write import write_atomically
from consparse.curve_kinds import CURVE_KINDS

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1

# Keys every results.json carries (see docs/architecture.md and the design).
REQUIRED_KEYS = (
    "method",
    "model",
    "dataset",
    "seed",
    "status",
)
# Keys a completed run carries in addition.
COMPLETED_KEYS = (
    "test_accuracy",
    "density",
    "per_layer_density",
    "params",
    "dense_params",
    "macs",
    "dense_macs",
    "latency_ms",
    "dense_latency_ms",
    "latency",
    "target_density",
    "compression_curve",
    "method_metrics",
    "train_seconds",
    "epochs",
    "export",
)
CURVE_KEYS = ("kind", "amount", "test_accuracy", "density", "params", "macs")
# failed: an error; diverged: the training loss stopped being finite; interrupted: stopped by a signal
# (a rerun in the same directory continues). All three say why in ``error``.
STATUSES = ("completed", "failed", "diverged", "interrupted")


class ResultsSchemaError(ValueError):
    """A results dictionary does not follow the contract."""


def validate_results(results: Mapping[str, Any]) -> None:
    """Raise ResultsSchemaError naming every missing or malformed key."""
    problems: list[str] = [f"missing key '{key}'" for key in REQUIRED_KEYS if key not in results]
    status = results.get("status")
    if status not in STATUSES:
        problems.append(f"status must be one of {STATUSES}, got {status!r}")
    if status not in ("completed", None) and not results.get("error"):
        problems.append(f"a {status} run must say why in 'error'")
    if status == "completed":
        problems += [f"missing key '{key}'" for key in COMPLETED_KEYS if key not in results]
        for key in ("test_accuracy", "density"):
            value = results.get(key)
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
    if problems:
        raise ResultsSchemaError("results.json does not follow the contract: " + "; ".join(problems))


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


def write_results(run_dir: str | Path, results: Mapping[str, Any]) -> Path:
    """Validate and write ``results.json`` into ``run_dir`` atomically; returns its path."""
    return write_results_file(Path(run_dir) / RESULTS_FILE, results)


def write_results_file(path: str | Path, results: Mapping[str, Any]) -> Path:
    """Validate ``results`` against the contract and write them to ``path`` atomically; returns the path."""
    payload = {"schema_version": SCHEMA_VERSION, **to_jsonable(dict(results))}
    validate_results(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_results(path: str | Path) -> dict[str, Any]:
    """Read one results.json (a path to the file or to its run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    with open(path) as handle:
        return json.load(handle)
