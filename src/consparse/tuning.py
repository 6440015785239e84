"""Choosing a hyperparameter on the validation split: the one rule a tuned sweep and its report share.

A tuned block sweep (``hydra.sweeper.tune``, ``consparse.tuned_sweep``) gives every arm of a
comparison the same budget: a grid of the same size centred on the arm's own default (the default
times each factor), searched on the first seed, then the remaining seeds at the value chosen here.
Every job says what it was in its results.json (``tuning``: ``key``, ``value``, ``factor``,
``phase``, ``grid``, ``factors``), so the report recomputes the choice from the files with this
same function and agrees with the sweeper by construction. Nothing here reads test accuracy.

The rule, per (setting, variant, key):

* a value's score is the mean ``val_accuracy`` of its search jobs (one per combination of the
  arm's own sweep, e.g. one per target density: the choice is per setting, never per density);
* a job fails when it did not complete (failed, diverged, missing), measured no validation
  accuracy, or missed its target density (deployed density above the target by more than
  ``TARGET_TOLERANCE``, the report's ⚠): accuracy bought by keeping more weights than asked is not
  a better learning rate. Values are ranked by their number of failures first, then by the mean
  over the jobs that did not fail, so a value that fails somewhere never beats one that fails nowhere;
* equal ranks go to the value closest to the default (factor nearest 1 on a log scale), then to
  the smaller factor.

The module imports nothing of Hydra or of the report, so both can use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The config key (conf/config.yaml) and the results.json key of a job's tuning.
TUNING_KEY = "tuning"
SEARCH = "search"
FINAL = "final"
# Scores this close are equal: means of the same accuracies summed in another order differ by rounding.
SCORE_TIE = 1e-12
# Relative excess of the deployed density over its target that counts as missing it (the report's ⚠).
TARGET_TOLERANCE = 0.05
# Significant digits of a grid value, so that 0.003 x 0.3333333 is written 0.001, not 0.0009999999.
VALUE_DIGITS = 6


@dataclass(frozen=True)
class GridPoint:
    """One value of a grid: ``factor`` times the default."""

    value: float
    factor: float


def grid(default: float, factors: Sequence[float]) -> list[GridPoint]:
    """The grid centred on ``default``: ``default * factor`` for each factor, rounded to ``VALUE_DIGITS``."""
    return [GridPoint(float(f"{default * factor:.{VALUE_DIGITS}g}"), float(factor)) for factor in factors]


def job_tuning(key: str, point: GridPoint, points: Sequence[GridPoint], phase: str) -> dict[str, Any]:
    """The ``tuning`` node of one job, as the sweeper sets it and results.json records it."""
    return {
        "key": key,
        "phase": phase,
        "value": point.value,
        "factor": point.factor,
        "grid": [p.value for p in points],
        "factors": [p.factor for p in points],
    }


@dataclass(frozen=True)
class Candidate:
    """A grid value with the validation accuracies of its search jobs (None: a failure)."""

    value: float
    factor: float
    accuracies: tuple[float | None, ...]

    @property
    def failures(self) -> int:
        return sum(accuracy is None for accuracy in self.accuracies)

    @property
    def mean(self) -> float | None:
        """Mean validation accuracy of the jobs that measured one (None when none did)."""
        measured = [a for a in self.accuracies if a is not None]
        return sum(measured) / len(measured) if measured else None

    @property
    def rank(self) -> tuple[int, float]:
        """What selection maximises: fewest failures (a value without jobs fails once), then the mean."""
        mean = self.mean
        return -(self.failures or int(not self.accuracies)), -math.inf if mean is None else mean


@dataclass(frozen=True)
class Selection:
    """The candidates of one (setting, variant, key) in grid order and the one chosen."""

    setting: str | None
    variant: str
    key: str
    candidates: tuple[Candidate, ...]
    chosen: Candidate

    def describe(self) -> str:
        """One line: the grid, the mean validation accuracy at each value, the choice."""
        parts = []
        for c in self.candidates:
            mean = "no accuracy" if c.mean is None else f"{c.mean:.4f}"
            failed = f", {c.failures} of {len(c.accuracies)} failed or missed the target" if c.failures else ""
            parts.append(f"{c.value:g} (x{c.factor:g}): {mean}{failed}")
        return (
            f"{self.variant}: {self.key} in [{', '.join(f'{c.value:g}' for c in self.candidates)}], mean val "
            f"accuracy {'; '.join(parts)}; chosen {self.chosen.value:g} (x{self.chosen.factor:g})"
        )


def choose(candidates: Sequence[Candidate]) -> Candidate:
    """The candidate with the highest rank; ties to the factor nearest 1, then the smaller factor."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    failures, best = max(c.rank for c in candidates)
    tied = [c for c in candidates if c.rank[0] == failures and c.rank[1] >= best - SCORE_TIE]
    return min(tied, key=lambda c: (abs(math.log(c.factor)) if c.factor > 0 else math.inf, c.factor))


def select(runs: Iterable[Mapping[str, Any]]) -> dict[tuple[str | None, str, str], Selection]:
    """Selections from the search jobs among ``runs`` (results.json contents), by (setting, variant, key).

    A run belongs to a search when its ``tuning.phase`` is ``search``; its status and
    ``val_accuracy`` are all that count (module docstring). The grid is the one the runs record,
    so a value whose every job is gone still appears, with no accuracy.
    """
    grouped: dict[tuple[str | None, str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        tuning = run.get(TUNING_KEY)
        if isinstance(tuning, Mapping) and tuning.get("phase") == SEARCH:
            grouped.setdefault(selection_key(run), []).append(run)
    selections = {}
    for (setting, variant, key), members in grouped.items():
        candidates = tuple(_candidates(members))
        selections[(setting, variant, key)] = Selection(setting, variant, key, candidates, choose(candidates))
    return selections


def selection_key(run: Mapping[str, Any]) -> tuple[str | None, str, str]:
    """(setting name, variant, tuned key) of a run with a ``tuning`` record."""
    setting = run.get("setting")
    name = setting.get("name") if isinstance(setting, Mapping) else None
    return name, str(run.get("variant") or run.get("method")), str(run[TUNING_KEY]["key"])


def _candidates(runs: Sequence[Mapping[str, Any]]) -> Iterable[Candidate]:
    first = runs[0][TUNING_KEY]
    points = [GridPoint(float(v), float(f)) for v, f in zip(first.get("grid") or [], first.get("factors") or [])]
    for run in runs:  # a value no other run recorded in its grid (a narrowed rerun) still counts
        point = GridPoint(float(run[TUNING_KEY]["value"]), float(run[TUNING_KEY]["factor"]))
        if not any(same_value(p.value, point.value) for p in points):
            points.append(point)
    for point in sorted(points, key=lambda p: p.factor):
        accuracies = tuple(
            _val_accuracy(run) for run in runs if same_value(float(run[TUNING_KEY]["value"]), point.value)
        )
        yield Candidate(point.value, point.factor, accuracies)


def _val_accuracy(run: Mapping[str, Any]) -> float | None:
    """The run's validation accuracy, or None when it failed (module docstring)."""
    accuracy = run.get("val_accuracy")
    if run.get("status") != "completed" or not _is_number(accuracy) or missed_target(run):
        return None
    return float(accuracy) if math.isfinite(accuracy) else None


def missed_target(run: Mapping[str, Any]) -> bool:
    """Whether a run's deployed density exceeds its (single) target by more than ``TARGET_TOLERANCE``."""
    target, density = run.get("target_density"), run.get("density")
    return _is_number(target) and _is_number(density) and density > target * (1 + TARGET_TOLERANCE)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same_value(a: float, b: float) -> bool:
    """Grid values read back from JSON or an override equal the planned ones up to rounding."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
