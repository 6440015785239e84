"""Results of runs: the results.json contract (``results``), reading a sweep's runs (``collect``),
the run table (``table``), averaging and judging (``summary``), the side-by-side comparison
(``compare``), a tuned sweep's choice on validation (``tuned``), markdown (``markdown``), plots
(``plots``), writing it all (``write``), the Hydra end-of-sweep hook (``callback``) and
``python -m consparse.report``.

``collect_results``, ``summarise`` and ``write_report`` are importable from here. They load
lazily: every training run imports ``consparse.report.results``, and it should not pay for pandas
and matplotlib, which only reporting needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "collect_results": "consparse.report.collect",
    "summarise": "consparse.report.summary",
    "write_report": "consparse.report.write",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
