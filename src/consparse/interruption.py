"""Stopping a run on a signal without losing work, and requeueing it under SLURM.

SLURM sends SIGTERM when it preempts a job or cancels it (``scancel``), and at the time limit
(then SIGKILL after ``KillWait``); ahead of the limit it sends the signal asked for with
``--signal`` (submitit: SIGUSR2, 90 s before; Lightning's convention: SIGUSR1). On any of the three
a run finishes the training step in progress, saves a checkpoint of that step
(``consparse.callbacks.RunCheckpoint``), writes results.json with status ``interrupted`` and exits
with ``128 + signal number``.

Inside ``Trainer.fit`` the stop goes through Lightning's own SIGTERM handling, which ends the batch,
agrees on the stop across DDP ranks and raises ``SIGTERMException``: SIGUSR1/2 are turned into a
SIGTERM to this process. Outside ``fit`` (reading data, measuring the final model) the handler
raises ``RunInterrupted`` at once; the checkpoints already written are what a rerun continues from.

Requeue: after SIGUSR1 or SIGUSR2 inside a SLURM job the job goes back to the queue, restarts in
the same run directory and resumes from the step's checkpoint. Under submitit
(``hardware=slurm``) the handler submitit installed for its signal does it: it pickles
hydra-submitit-launcher's ``checkpoint`` (the same job again), calls ``scontrol requeue`` and
exits. Without submitit (a plain ``sbatch`` script) ``scontrol requeue $SLURM_JOB_ID`` is called
here, as Lightning's ``SLURMEnvironment(auto_requeue=True)`` would. SIGTERM never requeues: it is
also how a user cancels a job.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from types import FrameType, TracebackType
from typing import Any

from typing_extensions import Self  # typing.Self is Python 3.11+; torch depends on typing_extensions

from consparse.run_dir import process_rank

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class RunInterrupted(SystemExit):
    """A signal stopped the run; exits with ``128 + signum`` unless caught.

    A ``SystemExit``, so that no ``except Exception`` (Hydra's job runner, a sweep) swallows it.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(128 + int(signum))
        self.signum = signal.Signals(signum)
        self.message = message or f"stopped by {self.signum.name}"

    def __str__(self) -> str:
        return self.message


class SignalWatch:
    """Handles SIGTERM, SIGUSR1 and SIGUSR2 while a run is in progress (a context manager).

    ``received`` is the first of them to arrive. The handlers in place before (submitit's) are kept
    and put back on exit; ``requeue`` hands the signal to them.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # already stopping; a second signal must not cut the checkpoint or results short
        self.received = signal.Signals(signum)
        if signal.getsignal(signal.SIGTERM) == self._handle:
            # Not inside Trainer.fit (Lightning composes its handler with ours while it trains).
            raise RunInterrupted(signum)
        log.warning("received %s: stopping after the training step in progress", self.received.name)
        if self.received != signal.SIGTERM:
            signal.raise_signal(signal.SIGTERM)  # Lightning's handler ends the batch; ours returns above

    def requeue(self) -> None:
        """Put the SLURM job back in the queue after SIGUSR1/2 (submitit's handler may exit the process)."""
        signum = self.received
        if signum not in REQUEUE_SIGNALS:
            return
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, None)
            return
        job = _slurm_job_id()
        if job is None or process_rank() != 0:
            return
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.error("could not requeue SLURM job %s: %s", job, error)
            return
        if result.returncode == 0:
            log.warning("requeued SLURM job %s: it resumes from the checkpoint just saved", job)
        else:
            log.error("could not requeue SLURM job %s: scontrol exited %d: %s", job, result.returncode,
                      result.stderr.strip())


def _slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")
