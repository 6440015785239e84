"""``hydra/sweeper=blocks``: launch a union of cartesian blocks (why and the rules: ``consparse.sweeper``)."""

# No ``from __future__ import annotations``: Hydra's plugin scan executes this module before it is
# in sys.modules, where dataclasses cannot resolve string annotations.
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from consparse.report.results import RESULTS_FILE, read_results
from consparse.sweeper import PLANNED, SweepPlan, plan_sweep, skip_unavailable
from consparse.tuned_sweep import TunedJob, TunedPlan, parse_tune, plan_tuning
from consparse.tuning import TUNING_KEY, GridPoint, select

log = logging.getLogger(__name__)


@dataclass
class BlocksSweeperConf:
    """``hydra.sweeper`` of a block sweep: the fields of Hydra's ``BasicSweeperConf`` plus the blocks."""

    _target_: str = "hydra_plugins.consparse_sweeper.blocks_sweeper.BlocksSweeper"
    # Jobs handed to the launcher at once (null: all), as in the basic sweeper.
    max_batch_size: int | None = None
    # Swept in every block, the outer loop (seed-major launch order).
    params: dict[str, Any] = field(default_factory=dict)
    # name -> {override key: value as on the command line}; one cartesian product each (null: left out).
    blocks: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    # Blocks skipped with a warning, rather than failing the sweep, while their config group option is missing.
    optional: list[str] = field(default_factory=list)
    # Keys whose command-line values choose blocks instead of changing them.
    select: list[str] = field(default_factory=lambda: ["method"])
    # {key, factors}: choose key per block on the validation split (consparse.tuned_sweep); null: no tuning.
    tune: dict[str, Any] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="blocks", node=BlocksSweeperConf, provider="consparse"
)


class BlocksSweeper(Sweeper):
    """Plans with ``consparse.sweeper.plan_sweep``, then launches like Hydra's basic sweeper."""

    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, Any] | None = None,
        blocks: dict[str, dict[str, Any] | None] | None = None,
        optional: list[str] | None = None,
        select: list[str] | None = None,
        tune: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.blocks = {name: None if block is None else dict(block) for name, block in (blocks or {}).items()}
        self.optional = list(optional or [])
        self.select = list(select) if select is not None else ["method"]
        self.tune = parse_tune(OmegaConf.to_container(tune) if OmegaConf.is_config(tune) else tune)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        plan = plan_sweep(
            self.params,
            self.blocks,
            arguments,
            select=self.select,
            optional=self.optional,
            parser=OverridesParser.create(config_loader=loader),
        )

        def compose(overrides: list[str]) -> DictConfig:
            return loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides)

        for block in skip_unavailable(plan, compose, self.optional):
            log.warning("block %s skipped: %s", block.name, block.reason)
        tuned = plan_tuning(plan, self.tune, compose) if self.tune is not None else None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if tuned is None:
            jobs = plan.jobs()
            log.info("blocks: %s", _describe(plan))
            return self._launch(jobs, 0)
        return self._tuned_sweep(tuned)

    def _tuned_sweep(self, tuned: TunedPlan) -> list[Sequence[JobReturn]]:
        """The search phase, the choice per block on validation accuracy, then the final phase."""
        search = tuned.search_jobs()
        log.info("tuning %s on validation, search phase: %s", tuned.tune.key, _describe(tuned.plan))
        returns = self._launch([job.overrides for job in search], 0)
        records = [_record(job, result) for job, result in zip(search, (r for batch in returns for r in batch))]
        by_block = {selection.variant: selection for selection in select(records).values()}
        for block in tuned.grids:
            log.info("tuning %s", by_block[block].describe())
        chosen = {block: GridPoint(by_block[block].chosen.value, by_block[block].chosen.factor) for block in tuned.grids}
        final = tuned.final_jobs(chosen)
        if final:
            log.info("final phase at the chosen values: %s", _describe(tuned.plan))
            returns += self._launch([job.overrides for job in final], len(search))
        return returns

    def _launch(self, jobs: list[list[str]], first: int) -> list[Sequence[JobReturn]]:
        """Launch ``jobs`` numbered from ``first``, ``max_batch_size`` at a time, as the basic sweeper does."""
        assert self.launcher is not None
        returns: list[Sequence[JobReturn]] = []
        size = self.max_batch_size or len(jobs)
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first + start)
            for result in results:
                _ = result.return_value  # re-raises a job's exception, as the basic sweeper does
            returns.append(results)
        return returns


def _record(job: TunedJob, result: JobReturn) -> dict[str, Any]:
    """A search job's results.json, or a stand-in that counts as a failure when it wrote none (or the
    file there is not this job's)."""
    output_dir = OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir") if result.hydra_cfg else None
    path = Path(str(output_dir)) / RESULTS_FILE if output_dir else None
    if path is not None and path.is_file():
        record = read_results(path)
        if record.get(TUNING_KEY) == job.tuning and record.get("variant") == job.block:
            return record
    setting = OmegaConf.select(result.cfg, "setting", default=None) if result.cfg is not None else None
    return {
        "status": "missing",
        "variant": job.block,
        "setting": OmegaConf.to_container(setting) if OmegaConf.is_config(setting) else setting,
        TUNING_KEY: job.tuning,
    }


def _describe(plan: SweepPlan) -> str:
    """The blocks launched and the blocks left out, with why."""
    run = [f"{block.name} ({len(block.jobs)} jobs)" for block in plan.planned]
    left_out = [f"{block.name} ({block.status}: {block.reason})" for block in plan.blocks if block.status != PLANNED]
    return ", ".join(run) + (f"; not run: {', '.join(left_out)}" if left_out else "")
