"""Collecting a sweep's runs: every ``results.json`` below a directory, read through ``Results``.

A run says what it is in its own results.json (method, model, dataset, seed, ``setting``,
``variant``, ``overrides``), so nothing here reads Hydra's records or parses its overrides. Two
kinds of rows stand in for a run that left no readable results:

* a ``results.json`` that cannot be read or breaks the contract: status ``failed``, with why;
* a Hydra job directory (it holds ``.hydra/``) without ``results.json`` (the job crashed, was
  killed or is still running): status ``missing``. Its method, model, dataset, seed and target come
  from ``run_identity.yaml``, which a run writes into its directory before training, where present.

Files written before results.json said their setting and variant (``schema_version`` 1) are refused
with one line naming how many and where: grouped by method alone, runs of different settings
(``l0_penalty`` at several penalties) would be averaged as if they were seeds.
"""

from __future__ import annotations

from json import JSONDecodeError
from pathlib import Path
from typing import Any

import yaml

from consparse.errors import ConfigError, ConsparseError
from consparse.report.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    Results,
    ResultsSchemaError,
    read_results,
)
from consparse.run_dir import IDENTITY_FILE

COMPLETED = "completed"
MISSING = "missing"
# Where run_identity.yaml (written when a run claims its directory) names what ran.
IDENTITY_PATHS = {
    "method": ("method", "name"),
    "model": ("model", "name"),
    "dataset": ("dataset", "name"),
    "seed": ("seed",),
    "target_density": ("method", "target_density"),
}


class NoResultsError(ConsparseError, FileNotFoundError):
    """The directory holds no ``results.json`` to aggregate."""


def collect_results(root: str | Path) -> list[dict[str, Any]]:
    """Every run below ``root`` as a dict of its results.json with ``run_dir`` (absolute) added,
    in natural order of the directories (0, 1, ..., 10); see the module docstring for the rows that
    stand in for unreadable or missing results.

    Raises NoResultsError when ``root`` holds no ``results.json`` at all, and ConfigError when some
    were written before ``schema_version`` 2.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoResultsError(f"no results.json found below {root}: it is not a directory")
    result_dirs = {path.parent for path in root.rglob(RESULTS_FILE) if path.is_file()}
    job_dirs = {path.parent for path in root.rglob(".hydra") if path.is_dir()}
    if not result_dirs:
        unfinished = f" ({len(job_dirs)} Hydra job directories without one)" if job_dirs else ""
        raise NoResultsError(f"no results.json found below {root}{unfinished}")
    run_dirs = sorted(result_dirs | job_dirs, key=_natural_key)
    rows = [_read_run(run_dir) if run_dir in result_dirs else _missing_run(run_dir) for run_dir in run_dirs]
    _refuse_outdated(rows, root)
    return rows


def _read_run(run_dir: Path) -> dict[str, Any]:
    try:
        data = read_results(run_dir)
    except (OSError, UnicodeDecodeError, JSONDecodeError) as exc:
        return _stand_in(run_dir, "failed", f"could not read {RESULTS_FILE}: {exc}")
    if not isinstance(data, dict):
        return _stand_in(run_dir, "failed", f"{RESULTS_FILE} holds a {type(data).__name__}, not an object")
    if _outdated(data):
        return {**data, "run_dir": str(run_dir.resolve()), "_outdated": True}
    row = {key: value for key, value in data.items() if key != "schema_version"}
    try:
        # What ran must be there; a missing figure is shown as missing (a results.json written by hand).
        Results.from_json(data, measurements=False)
    except ResultsSchemaError as exc:
        row.update(status="failed", error=str(exc))
    row["run_dir"] = str(run_dir.resolve())
    return row


def _outdated(data: dict[str, Any]) -> bool:
    version = data.get("schema_version")
    return not isinstance(version, int) or version < SCHEMA_VERSION


def _refuse_outdated(rows: list[dict[str, Any]], root: Path) -> None:
    outdated = [row["run_dir"] for row in rows if row.pop("_outdated", False)]
    if outdated:
        raise ConfigError(
            str(Path(outdated[0]) / RESULTS_FILE),
            f"{len(outdated)} of the {len(rows)} runs below {root} were written before results.json said its "
            f"setting and variant (schema_version < {SCHEMA_VERSION}); rerun them, or report them with the "
            "consparse version that wrote them",
        )


def _missing_run(run_dir: Path) -> dict[str, Any]:
    return _stand_in(
        run_dir, MISSING, "no results.json: the job crashed or was killed before writing it, or is still running"
    )


def _stand_in(run_dir: Path, status: str, error: str) -> dict[str, Any]:
    """A row for a run without readable results: what ran, from ``run_identity.yaml`` where possible."""
    return {**_identity(run_dir), "status": status, "error": error, "run_dir": str(run_dir.resolve())}


def _identity(run_dir: Path) -> dict[str, Any]:
    try:
        written = yaml.safe_load((run_dir / IDENTITY_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    identity = {}
    for key, path in IDENTITY_PATHS.items():
        value: Any = written
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None and not isinstance(value, (dict, list)):
            identity[key] = value
    return identity


def _natural_key(path: Path) -> tuple:
    """Sort job directories 0, 1, ..., 10 rather than 0, 1, 10, 2."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)
