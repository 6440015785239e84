"""Planning of a tuned block sweep (``hydra.sweeper.tune``): a search phase, then a final phase.

Why. A comparison whose arms run at their authors' (or our) default learning rates favours the
arms whose defaults happen to suit the setting. A fair protocol gives every arm the same budget: a
grid of the same size, centred on the arm's own default, searched the same way, and a choice made
on the validation split only (``consparse.tuning``, which the report uses too). The alternatives
were a grid per method in the method configs (sizes and spacing drift apart, and nothing says how
the value was chosen) or a separate tuning sweep and a hand-copied value (the choice is no longer
recorded beside the runs, and test numbers can creep into it).

The configuration (``hydra.sweeper.tune``)::

    tune: {key: method.optimizer.lr, factors: [0.3333333, 1.0, 3.0]}

* **Grid.** Per planned block: its composed value of ``key`` (the method's default, or what the
  block or the command line sets it to) times each factor. A block that sweeps ``key`` is refused:
  the tuning chooses it.
* **Search phase.** The first combination of ``hydra.sweeper.params`` (seed 0) x every planned
  block's own product (e.g. every target density) x each grid value.
* **Selection.** Per block, the value with the highest mean ``val_accuracy`` over its search jobs
  (``consparse.tuning.select``: fewest failures or missed targets first, then the mean; ties go to factor 1). The choice is per
  setting and block, never per density; test accuracy plays no part.
* **Final phase.** The remaining combinations of ``params`` (seeds 1, 2) with each block's chosen
  value only.

Every job gets ``tuning={key, phase, value, factor, grid, factors}`` and ``key=<value>``, which
the run writes into its results.json. The sweep needs a held-out validation split
(``dataset.val_fraction`` > 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from consparse.sweeper import BlockSweepError, SweepPlan, format_value
from consparse.tuning import FINAL, SEARCH, TUNING_KEY, GridPoint, grid, job_tuning

WHERE = "hydra.sweeper.tune"


@dataclass(frozen=True)
class TuneConfig:
    """``hydra.sweeper.tune``: the config key tuned and the factors of its grid."""

    key: str
    factors: tuple[float, ...]


@dataclass(frozen=True)
class TunedJob:
    """One job of a phase: its block, its grid value, its overrides and its ``tuning`` node."""

    block: str
    point: GridPoint
    overrides: list[str]
    tuning: dict[str, Any]


def parse_tune(tune: Mapping[str, Any] | None) -> TuneConfig | None:
    """The tuning config, or None when ``tune`` is null; BlockSweepError naming the key otherwise."""
    if tune is None:
        return None
    if not isinstance(tune, Mapping) or set(tune) != {"key", "factors"}:
        raise BlockSweepError(
            f"{WHERE}: got {tune!r}; give {{key: <config key>, factors: [<positive numbers>]}} "
            "or null for no tuning"
        )
    key, factors = tune["key"], tune["factors"]
    if not isinstance(key, str) or not key or key.split(".")[0] in (TUNING_KEY, "variant", "seed"):
        raise BlockSweepError(f"{WHERE}.key: got {key!r}; give the dotted key of a number, e.g. method.optimizer.lr")
    if (
        isinstance(factors, (str, bytes))
        or not isinstance(factors, Sequence)
        or not factors
        or not all(_positive_number(f) for f in factors)
        or len(set(factors)) != len(factors)
    ):
        raise BlockSweepError(
            f"{WHERE}.factors: got {factors!r}; give distinct positive numbers, e.g. [0.3333333, 1.0, 3.0]"
        )
    return TuneConfig(key, tuple(float(f) for f in factors))


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@dataclass
class TunedPlan:
    """A block sweep's plan with the tuned key taken out of it and each planned block's grid."""

    plan: SweepPlan
    tune: TuneConfig
    grids: dict[str, list[GridPoint]]

    def search_jobs(self) -> list[TunedJob]:
        """The first combination of ``params`` x every block's product x each value of its grid."""
        first = self.plan.shared_combinations()[:1]
        suffixes = {name: [self._overrides(p, points, SEARCH) for p in points] for name, points in self.grids.items()}
        return self._tagged(self.plan.jobs(first, suffixes), self.grids, SEARCH)

    def final_jobs(self, chosen: Mapping[str, GridPoint]) -> list[TunedJob]:
        """The remaining combinations of ``params`` x every block's product at its ``chosen`` value."""
        rest = self.plan.shared_combinations()[1:]
        if not rest:
            return []
        suffixes = {name: [self._overrides(chosen[name], points, FINAL)] for name, points in self.grids.items()}
        return self._tagged(self.plan.jobs(rest, suffixes), {name: [chosen[name]] for name in self.grids}, FINAL)

    def _overrides(self, point: GridPoint, points: Sequence[GridPoint], phase: str) -> list[str]:
        tuning = job_tuning(self.tune.key, point, points, phase)
        return [f"{self.tune.key}={format_value(point.value)}", f"{TUNING_KEY}={format_value(tuning)}"]

    def _tagged(self, jobs: list[list[str]], values: Mapping[str, Sequence[GridPoint]], phase: str) -> list[TunedJob]:
        """Each job with its block and value: a block's jobs cycle through its values in order."""
        tagged: list[TunedJob | None] = [None] * len(jobs)
        for block in self.plan.planned:
            points = values[block.name]
            for i, number in enumerate(block.jobs):
                point = points[i % len(points)]
                tuning = job_tuning(self.tune.key, point, self.grids[block.name], phase)
                tagged[number] = TunedJob(block.name, point, jobs[number], tuning)
        return [job for job in tagged if job is not None]


def plan_tuning(plan: SweepPlan, tune: TuneConfig, compose: Callable[[list[str]], Any]) -> TunedPlan:
    """Take ``tune.key`` out of ``plan`` and centre each planned block's grid on its composed value.

    ``compose`` turns a job's overrides into its config (the sweeper's ``load_sweep_config``). Raises
    BlockSweepError naming the key when a block or the command line sweeps it or sets ``tuning``, when
    a block's value of it is not a positive number, or when a block holds out no validation split.
    """
    key = tune.key
    keys = [*plan.extras, *(k for block in plan.planned for k in block.params)]
    if any(k.split(".")[0].lstrip("+~") == TUNING_KEY for k in keys):
        raise BlockSweepError(f"{WHERE}: {TUNING_KEY} is set by the tuned sweep for every job; leave it out")
    swept = [b.name for b in plan.planned if len(b.params.get(key, [])) > 1]
    swept += ["the command line"] if len(plan.extras.get(key, [])) > 1 else []
    if swept:
        raise BlockSweepError(f"{WHERE}.key: {key} is swept by {', '.join(swept)}; the tuning chooses it, set one value")
    jobs = plan.jobs()
    grids = {}
    for block in plan.planned:
        cfg = compose(jobs[block.jobs[0]])
        default = OmegaConf.select(cfg, key, default=None)
        if not _positive_number(default):
            raise BlockSweepError(
                f"{WHERE}.key: {key} is {default!r} in block {block.name}; tuning needs a positive number there "
                "(set it in the block, or hydra.sweeper.tune=null)"
            )
        val_fraction = OmegaConf.select(cfg, "dataset.val_fraction", default=None)
        if not val_fraction:
            raise BlockSweepError(
                f"{WHERE}: block {block.name} holds out no validation split (dataset.val_fraction={val_fraction}) "
                "and the tuning chooses on it; set dataset.val_fraction > 0 or hydra.sweeper.tune=null"
            )
        grids[block.name] = grid(float(default), tune.factors)
    for block in plan.planned:
        block.params.pop(key, None)
    plan.extras.pop(key, None)
    return TunedPlan(plan, tune, grids)
