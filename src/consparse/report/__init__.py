"""Results of runs: the results.json contract (``results``), aggregation into tables (``aggregate``),
plots (``plots``), the Hydra end-of-sweep hook (``callback``) and ``python -m consparse.report``.

``collect_results``, ``summarise`` and ``write_report`` are importable from here. They load
lazily: every training run imports ``consparse.report.results``, and it should not pay for pandas
and matplotlib, which only reporting needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["collect_results", "summarise", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("consparse.report.aggregate"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
