"""Writing the sweep report when a Hydra multirun ends.

Register it in the primary config::

    hydra:
      callbacks:
        report:
          _target_: consparse.report.callback.ReportCallback

Hydra calls ``on_multirun_end`` in the launching process after every job has returned, also with
remote launchers (submitit), so the report sees all the jobs' ``results.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from consparse.report.aggregate import DEFAULT_TOLERANCE, write_report
from consparse.validation import check_range

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """Aggregate ``hydra.sweep.dir`` into results.csv, results.md and plots at the end of a multirun.

    Args:
        out_dir: where to write the report (default: the sweep directory).
        group_by: variant keys (see ``consparse.report.aggregate``); default: detected from overrides.
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
        # The sweep has finished whatever happens here: a report that cannot be written is a
        # warning, never an error that would make the finished sweep look failed.
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            paths = write_report(sweep_dir, self.out_dir, group_by=self.group_by, tolerance=self.tolerance)
        except Exception as exc:  # noqa: BLE001 (see above)
            log.warning("could not write the sweep report: %s: %s", type(exc).__name__, exc)
            return
        log.info("sweep report: %s", paths["markdown"])
