"""Planning of block sweeps: a multirun that is a union of cartesian products (``hydra/sweeper=blocks``).

Why a sweeper of our own. Hydra 1.3's basic sweeper launches one cartesian product of
``hydra.sweeper.params`` and the command line. A comparison of methods is not one product: the
methods take different knobs (``l0_penalty`` a penalty and no target, ``dense`` neither,
``magnitude`` its fine-tuning epochs) and ``implicit_fw`` needs another model, so a product over
all of them composes jobs that cannot exist (``method.penalty`` on ``sfw``). The alternatives were
one preset per block with a wrapper script (then a setting is no longer one ``python train.py -m``
command, and the sweep has no single directory and report), or mapping one sweep index onto each
method's knob by interpolation (group choices such as the model cannot follow the method outside
the primary config's defaults list, and the method configs would carry sweep grids). A Sweeper
that launches a union of products keeps one command, the basic launcher, the job numbering, the
``.hydra`` records and the multirun callbacks. Hydra instantiates only plugins defined under the
``hydra_plugins`` namespace package (``Plugins._instantiate`` checks the class path), so the
Sweeper class is ``hydra_plugins.consparse_sweeper.blocks_sweeper.BlocksSweeper``; this module
holds what it plans, which knows nothing of launching and is tested on its own.

The configuration (``hydra.sweeper`` once ``override /hydra/sweeper: blocks`` is chosen)::

    params:   {seed: "0,1,2"}                 # swept in every block, the outer loop
    blocks:                                   # name -> {override key: value}, one product each
      dense: {method: dense}
      l0:    {method: l0, method.target_density: "0.5,0.1"}
      l0_penalty: {method: l0_penalty, method.penalty: "0.01,0.1"}
    optional: [implicit_fw]                   # skipped, not an error, while their configs are missing
    select: [method]                          # keys whose command-line values choose blocks
    tune: {key: method.optimizer.lr, factors: [0.3333333, 1.0, 3.0]}  # or null (the default)

``tune`` makes the sweep two phases (``consparse.tuned_sweep``): every planned block's own grid of
``key`` (its composed default, or what the block or the command line sets it to, times each
factor) searched on the first combination of ``params`` (seed 0) x the block's product, then the
remaining combinations (seeds 1, 2) at the value with the best mean validation accuracy of that
block's search jobs (``consparse.tuning``: fewest failures or missed targets first, then the mean; ties go to factor 1). The
same budget for every block, chosen per block and never per density, on the validation split
only; each job gets ``tuning={key, phase, value, factor, grid, factors}`` beside ``variant``.

A block set to ``null`` is left out, as if it were not listed: a preset that includes a shared
block list (conf/experiment/_compare.yaml) drops the blocks its setting does not compare; an
``optional`` name of a left-out block is ignored.

Values are written as on the command line (``a,b`` sweeps, ``[a,b]`` is a list value, ``null``).
Command-line overrides, in this order of precedence:

* a **select** key (``method=sfw,l0``) keeps the blocks whose value is among those given (and only
  those values of a block that sweeps the key); nothing else changes;
* a key of ``params`` replaces its values for every block (``seed=0``);
* a key some blocks set replaces it in those blocks only (``method.target_density=0.5,0.1`` leaves
  ``dense`` and ``l0_penalty`` alone; ``method.penalty=0.01`` touches only ``l0_penalty``);
* any other override goes to every job (``trainer.max_epochs=1``, ``dataset.root=...``), a sweep
  there multiplying every block.

Jobs are launched seed-major: for each combination of ``params``, every block in order, each with its
own product. An interrupted sweep therefore holds complete comparisons for its first seeds.

Every job gets ``variant=<block name>``, which the run writes into its results.json: the report
tells the arms of a comparison apart by what the runs say, never by this plan (the sweeper writes
no file of its own; what it skipped is in its log).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException

PLANNED = "planned"
# Its config group option does not exist (a method still being written): an optional block only.
SKIPPED = "skipped"
# Left out by a select key on the command line.
DESELECTED = "deselected"
# The config key each job's block name goes to.
VARIANT_KEY = "variant"


class BlockSweepError(HydraException):
    """The block sweep is misconfigured; the message names the key or block and what is allowed."""


@dataclass
class Block:
    """One cartesian product: ``params`` maps an override key to its expanded ``key=value`` strings."""

    name: str
    params: dict[str, list[str]]
    status: str = PLANNED
    reason: str = ""
    jobs: list[int] = field(default_factory=list)

    def combinations(self) -> list[list[str]]:
        return [list(combo) for combo in itertools.product(*self.params.values())]


@dataclass
class SweepPlan:
    """What a block sweep launches: ``shared`` (outer loop) x each planned block x ``extras``."""

    arguments: list[str]
    shared: dict[str, list[str]]
    blocks: list[Block]
    extras: dict[str, list[str]]

    @property
    def planned(self) -> list[Block]:
        return [block for block in self.blocks if block.status == PLANNED]

    def shared_combinations(self) -> list[list[str]]:
        """The combinations of ``params``, in launch order (the first is the first seed)."""
        return [list(combo) for combo in itertools.product(*self.shared.values())]

    def jobs(
        self, shared: Sequence[list[str]] | None = None, suffixes: Mapping[str, Sequence[list[str]]] | None = None
    ) -> list[list[str]]:
        """Every job's overrides in launch order; also records each block's job numbers.

        ``shared`` restricts the launch to some combinations of ``params`` (default: all);
        ``suffixes`` maps a block to override lists that each of its jobs is launched once with
        (default: once, as it is), which is how a tuned sweep adds its grid (``consparse.tuned_sweep``).
        """
        jobs: list[list[str]] = []
        for block in self.blocks:
            block.jobs = []
        extras = [list(combo) for combo in itertools.product(*self.extras.values())]
        for combination in self.shared_combinations() if shared is None else shared:
            for block in self.planned:
                for combo in block.combinations():
                    for extra in extras:
                        for suffix in (suffixes or {}).get(block.name, [[]]):
                            block.jobs.append(len(jobs))
                            jobs.append([*combo, *combination, *extra, f"{VARIANT_KEY}={block.name}", *suffix])
        return jobs


def plan_sweep(
    params: Mapping[str, Any] | None,
    blocks: Mapping[str, Mapping[str, Any] | None],
    arguments: Sequence[str],
    select: Sequence[str] = ("method",),
    optional: Sequence[str] = (),
    parser: OverridesParser | None = None,
) -> SweepPlan:
    """Merge the sweep config with the command line (rules in the module docstring).

    Raises BlockSweepError naming the problem when a block is empty, sets a key of ``params``,
    lacks a select key, ``optional`` names no block, or the command line selects no block.
    """
    parser = parser or OverridesParser.create()
    left_out = {name for name, mapping in blocks.items() if mapping is None}
    blocks = {name: mapping for name, mapping in blocks.items() if mapping is not None}
    optional = [name for name in optional if name not in left_out]
    if not blocks:
        raise BlockSweepError(
            "hydra.sweeper.blocks: no blocks; give at least one {override key: value} mapping"
        )
    unknown = [name for name in optional if name not in blocks]
    if unknown:
        raise BlockSweepError(f"hydra.sweeper.optional: {unknown} are not blocks; blocks: {list(blocks)}")
    shared = _expand_mapping(parser, params or {}, "hydra.sweeper.params")
    planned = [_plan_block(parser, name, mapping, shared, select) for name, mapping in blocks.items()]
    extras: dict[str, list[str]] = {}
    for override in parser.parse_overrides(list(arguments)):
        key, values = _key(override), _expand(override, "the command line")
        _refuse_variant(key, "the command line")
        if key in select:
            _select(planned, key, values)
        elif key in shared:
            shared[key] = values
        elif any(key in block.params for block in planned):
            for block in planned:
                if key in block.params:
                    block.params[key] = values
        else:
            extras[key] = values
    if not any(block.status == PLANNED for block in planned):
        choices = "; ".join(
            f"{b.name}: {', '.join(_value(v) for k in select for v in b.params[k])}" for b in planned
        )
        raise BlockSweepError(f"the command line selects no block ({' '.join(arguments)}); blocks: {choices}")
    return SweepPlan(list(arguments), shared, planned, extras)


def _plan_block(
    parser: OverridesParser, name: str, mapping: Mapping[str, Any], shared: Mapping[str, Any], select: Sequence[str]
) -> Block:
    where = f"hydra.sweeper.blocks.{name}"
    if not mapping:
        raise BlockSweepError(f"{where}: an empty block; give its overrides, e.g. {{method: dense}}")
    expanded = _expand_mapping(parser, mapping, where)
    overlap = sorted(set(expanded) & set(shared))
    if overlap:
        raise BlockSweepError(
            f"{where}: sets {overlap}, which hydra.sweeper.params sweeps for every block; set it in the blocks instead"
        )
    missing = [key for key in select if key not in expanded]
    if missing:
        raise BlockSweepError(f"{where}: lacks {missing}; every block sets each hydra.sweeper.select key")
    return Block(name, expanded)


def _refuse_variant(key: str, where: str) -> None:
    if key == VARIANT_KEY:
        raise BlockSweepError(
            f"{where}: sets {VARIANT_KEY}, which a block sweep sets to each job's block name; leave it out"
        )


def skip_unavailable(
    plan: SweepPlan, compose: Callable[[list[str]], Any], optional: Iterable[str]
) -> list[Block]:
    """Compose the first job of every planned block; an optional block whose config group option
    does not exist (``MissingConfigException``) is marked skipped, any other failure propagates.
    Returns the skipped blocks."""
    optional = set(optional)
    skipped = []
    jobs = plan.jobs()
    for block in plan.planned:
        try:
            compose(jobs[block.jobs[0]])
        except MissingConfigException as exc:
            if block.name not in optional:
                raise
            block.status, block.reason = SKIPPED, _first_line(str(exc))
            skipped.append(block)
    return skipped


def format_value(value: Any) -> str:
    """A YAML value as the override text Hydra parses back into it (``None`` -> ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


# ------------------------------------------------------------------------------------- helpers
def _expand_mapping(parser: OverridesParser, mapping: Mapping[str, Any], where: str) -> dict[str, list[str]]:
    expanded = {}
    for key, value in mapping.items():
        (override,) = parser.parse_overrides([f"{key}={format_value(value)}"])
        _refuse_variant(_key(override), where)
        expanded[_key(override)] = _expand(override, f"{where}.{key}")
    return expanded


def _expand(override: Override, where: str) -> list[str]:
    """``key=a,b`` -> ``["key=a", "key=b"]``; a single value -> one string."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        if override.is_delete() and override.value() is None:
            return [key]  # ~key: delete whatever value it has
        return [f"{key}={override.get_value_element_as_str()}"]
    if not override.is_discrete_sweep():
        raise BlockSweepError(
            f"{where}: {override.input_line} is a {override.value_type.name}; only lists and ranges are swept"
        )
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def _key(override: Override) -> str:
    """What overrides of the same thing share: the key or group, with its package."""
    return (
        override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
    )


def _value(expanded: str) -> str:
    return expanded.split("=", 1)[1] if "=" in expanded else expanded


def _select(blocks: Sequence[Block], key: str, values: Sequence[str]) -> None:
    wanted = {_value(v) for v in values}
    for block in blocks:
        kept = [v for v in block.params[key] if _value(v) in wanted]
        if kept:
            block.params[key] = kept
        elif block.status == PLANNED:
            block.status, block.reason = DESELECTED, f"{key}={','.join(sorted(wanted))} on the command line"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)

