"""How a job's processes find each other when a launcher, not Lightning, started them.

Lightning starts the DDP processes itself for ``python train.py hardware=cpu_ddp|multigpu``. Under
``srun`` (``hardware=slurm``: one SLURM task per device) and ``torchrun`` the launcher has started
them, and Lightning reads their places from the launcher's variables (its ``SLURMEnvironment`` and
``TorchElasticEnvironment``). submitit's local executor (``hydra/launcher=submitit_local``, the
SLURM launcher's stand-in on a workstation) starts the tasks too but names their places in its own
variables, which no Lightning environment reads: ``adopt_submitit_local_tasks`` exports them as
torch's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, which
Lightning's default environment reads (and takes as a sign that the processes exist already).
"""

from __future__ import annotations

import os


def adopt_submitit_local_tasks() -> None:
    """Under submitit's local executor with several tasks, export each task's place for torch.distributed."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) < 2:
        return
    from submitit.helpers import TorchDistributedEnvironment

    # submitit's variables are this task's truth: they replace any RANK or WORLD_SIZE inherited from the
    # shell that started the sweep. Every task keeps all devices visible: Lightning picks its local rank's.
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def launched_externally() -> bool:
    """Whether this process is one of several a launcher (srun, torchrun, submitit) started for one job."""
    return "SLURM_NTASKS" in os.environ or "LOCAL_RANK" in os.environ
