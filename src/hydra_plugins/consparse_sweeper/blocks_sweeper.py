"""``hydra/sweeper=blocks``: launch a union of cartesian blocks (why and the rules: ``consparse.sweeper``)."""

# No ``from __future__ import annotations``: Hydra's plugin scan executes this module before it is
# in sys.modules, where dataclasses cannot resolve string annotations.
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from consparse.sweeper import PLANNED, SweepPlan, plan_sweep, skip_unavailable

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
    blocks: dict[str, Optional[dict[str, Any]]] = field(default_factory=dict)
    # Blocks skipped with a warning, rather than failing the sweep, while their config group option is missing.
    optional: list[str] = field(default_factory=list)
    # Keys whose command-line values choose blocks instead of changing them.
    select: list[str] = field(default_factory=lambda: ["method"])


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
    ) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.blocks = {name: None if block is None else dict(block) for name, block in (blocks or {}).items()}
        self.optional = list(optional or [])
        self.select = list(select) if select is not None else ["method"]
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
        for block in skip_unavailable(
            plan,
            lambda overrides: loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides),
            self.optional,
        ):
            log.warning("block %s skipped: %s", block.name, block.reason)
        jobs = plan.jobs()
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info("blocks: %s", _describe(plan))
        returns: list[Sequence[JobReturn]] = []
        for start in range(0, len(jobs), self.max_batch_size or len(jobs)):
            batch = jobs[start : start + (self.max_batch_size or len(jobs))]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=start)
            for result in results:
                _ = result.return_value  # re-raises a job's exception, as the basic sweeper does
            returns.append(results)
        return returns


def _describe(plan: SweepPlan) -> str:
    """The blocks launched and the blocks left out, with why."""
    run = [f"{block.name} ({len(block.jobs)} jobs)" for block in plan.planned]
    left_out = [f"{block.name} ({block.status}: {block.reason})" for block in plan.blocks if block.status != PLANNED]
    return ", ".join(run) + (f"; not run: {', '.join(left_out)}" if left_out else "")
