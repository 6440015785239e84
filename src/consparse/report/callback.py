"""Writing the sweep report when a Hydra multirun ends.

Register it in the primary config::

    hydra:
      callbacks:
        report:
          _target_: consparse.report.callback.ReportCallback

Hydra calls ``on_multirun_end`` in the launching process after every job has returned, also with
remote launchers (submitit), so the report sees all the jobs' ``results.json``.

A sweep in which any job did not complete (failed, diverged, interrupted, or left no results.json)
exits with status 1 once its report is written, so that SLURM and CI notice; Hydra itself would
exit 0, since each job's failure is recorded rather than raised. A tuned sweep's search runs at the
values not chosen do not count: one that failed only lost the choice (``consparse.report.tuned``).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from consparse.errors import ConfigError
from consparse.report.collect import NoResultsError, collect_results
from consparse.report.summary import DEFAULT_TOLERANCE
from consparse.report.tuned import split_tuning
from consparse.report.write import write_report
from consparse.validation import check_range

log = logging.getLogger(__name__)

# Exit status of a multirun in which some job did not complete.
UNSUCCESSFUL_SWEEP_EXIT = 1


class ReportCallback(Callback):
    """Aggregate ``hydra.sweep.dir`` into results.csv, results.md and plots at the end of a multirun.

    Args:
        out_dir: where to write the report (default: the sweep directory).
        group_by: variant keys (see ``consparse.report.table``); default: detected from the runs' overrides.
        tolerance: relative density tolerance for meeting a target.
    """

    def __init__(
        self,
        out_dir: str | None = None,
        group_by: Sequence[str] | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        check_range("hydra.callbacks.report.tolerance", tolerance, 0.0)
        self.out_dir = out_dir
        self.group_by = list(group_by) if group_by is not None else None
        self.tolerance = tolerance

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # The jobs have finished whatever happens here: a report that cannot be written is a
        # warning, never an error that would make a sweep whose jobs all completed look failed.
        selected = OmegaConf.select(config, "hydra.sweep.dir")
        if selected is None:
            log.warning("could not write the sweep report: the config has no hydra.sweep.dir")
            return
        sweep_dir = Path(str(selected))
        report: Path | None = None
        try:
            report = write_report(sweep_dir, self.out_dir, group_by=self.group_by, tolerance=self.tolerance)["markdown"]
        except Exception as exc:  # noqa: BLE001 (see above)
            log.warning("could not write the sweep report: %s: %s", type(exc).__name__, exc)
        else:
            log.info("sweep report: %s", report)
        problem = unsuccessful_jobs(sweep_dir)
        if problem:
            print(f"consparse: error: {problem}; see {report or sweep_dir}", file=sys.stderr)
            sys.exit(UNSUCCESSFUL_SWEEP_EXIT)


def unsuccessful_jobs(sweep_dir: Path) -> str:
    """How many of the sweep's jobs did not complete, by status ("" when every job completed)."""
    try:
        # A search run of a tuned sweep at a value not chosen lost the choice, failed or not.
        statuses = Counter(str(row.get("status")) for row in split_tuning(collect_results(sweep_dir)).kept)
    except NoResultsError as exc:
        return f"no job of the sweep completed ({exc})"
    except ConfigError as exc:
        return f"the sweep's results cannot be counted ({exc})"
    total = sum(statuses.values())
    statuses.pop("completed", None)
    if not statuses:
        return ""
    counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    return f"{sum(statuses.values())} of {total} jobs did not complete ({counts})"
