"""Run one job of a block sweep as a single run: how a comparison preset runs as a W&B sweep.

    python -m consparse.block_job train.py experiment=compare_mnist_mlp [overrides...] job=<n>

runs job ``n`` of the sweep ``python train.py -m experiment=compare_mnist_mlp [overrides...]``
would launch (``hydra/sweeper=blocks``, see consparse.sweeper) as ``python train.py <that job's
overrides>``: the same overrides, planned by the same code, in the same (seed-major) order.

Why: a W&B sweep is one cartesian grid, while a comparison preset is a union of blocks (each method
with its own knobs, ``implicit_fw`` with another model). A W&B grid over the job number of the
preset's plan (``sweeps/compare_*.yaml``) gives every job its own W&B run, each told what it is
(method, target density, seed ... as config and tags, consparse.loggers), so the UI filters and
groups the comparison like any other sweep. The alternatives were one W&B sweep per block (seven
files per preset, the comparison split) or a W&B grid over method x density x seed (composes jobs
that cannot exist, such as ``method.penalty`` on ``sfw``, and loses per-block settings such as
magnitude's fine-tuning epochs).

The plan is the untuned one (as with ``hydra.sweeper.tune=null``): a tuned sweep's final phase
runs at values its search phase chooses on validation (``consparse.tuned_sweep``), which a W&B grid
fixed in advance cannot wait for; the tuned comparison is the multirun.

``hydra.*`` overrides go to the job unchanged; the others form the sweep's command line, so a
select key (``method=sfw,l0``) or ``seed=0`` narrows the plan exactly as it narrows the multirun.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from consparse.errors import ConfigError, ConsparseError
from consparse.sweeper import BlockSweepError, SweepPlan, plan_sweep, skip_unavailable

JOB_KEY = "job"


def plan_of(conf_dir: Path, arguments: Sequence[str]) -> SweepPlan:
    """The block plan ``python train.py -m <arguments>`` would launch (``arguments``: no ``hydra.*``)."""
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
        cfg = compose("config", overrides=list(arguments), return_hydra_config=True)
        sweeper = cfg.hydra.sweeper
        if not str(sweeper.get("_target_", "")).endswith("BlocksSweeper"):
            raise ConfigError(
                "hydra.sweeper",
                f"{' '.join(arguments)} is not a block sweep; give a preset with hydra/sweeper=blocks "
                "(experiment=compare_...), or run the single job with train.py directly",
            )
        settings = OmegaConf.to_container(sweeper, resolve=False)
        optional = settings.get("optional") or []
        plan = plan_sweep(settings.get("params"), settings.get("blocks") or {}, arguments,
                          select=settings.get("select") or ["method"], optional=optional,
                          parser=OverridesParser.create())
        skip_unavailable(plan, lambda overrides: compose("config", overrides=list(overrides)), optional)
    return plan


def job_command(program: str, arguments: Sequence[str], interpreter: str = sys.executable) -> list[str]:
    """``[interpreter, program, *overrides]`` of the job ``job=<n>`` among ``arguments`` names."""
    jobs_given = [arg for arg in arguments if arg.startswith(f"{JOB_KEY}=")]
    if len(jobs_given) != 1:
        raise ConfigError(JOB_KEY, f"give exactly one {JOB_KEY}=<number> (got {jobs_given or 'none'})")
    text = jobs_given[0].split("=", 1)[1]
    hydra_overrides = [arg for arg in arguments if arg.startswith("hydra.")]
    sweep_arguments = [arg for arg in arguments if arg not in jobs_given and arg not in hydra_overrides]
    jobs = plan_of(Path(program).resolve().parent / "conf", sweep_arguments).jobs()
    if not text.isdigit() or int(text) >= len(jobs):
        raise ConfigError(JOB_KEY, f"got {text!r}; this sweep has jobs 0..{len(jobs) - 1}")
    return [interpreter, program, *hydra_overrides, *jobs[int(text)]]


def main(argv: Sequence[str]) -> None:
    if not argv or "=" in argv[0]:
        print("usage: python -m consparse.block_job <train.py> <overrides...> job=<n>", file=sys.stderr)
        sys.exit(2)
    try:
        command = job_command(argv[0], argv[1:])
    except (ConsparseError, BlockSweepError) as error:
        print(f"consparse: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(" ".join(command[1:]), flush=True)
    # The job replaces this process, so that an agent's signals reach it directly.
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
