"""Text formatting shared by the report's sections and the summary a run prints: counts,
significant digits, markdown cells and tables.

Free of pandas, which a training run that prints its summary should not import.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def is_nan(value: Any) -> bool:
    """True for None, NaN and pandas' NA; False for anything that is not a missing scalar."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, numbers.Real) and math.isnan(value)


def format_count(value: Any) -> str:
    """266600 -> ``266.6k``, 1.2e6 -> ``1.2M``; below 1000 a whole number; — for no number."""
    if not isinstance(value, numbers.Real) or is_nan(value):
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        # 999,960 would print as 1000.0k; it reads better as 1.0M.
        if abs(value) >= scale * 0.99995:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def significant_decimals(value: float, digits: int = 3) -> int:
    """Decimals that show ``value`` with ``digits`` significant digits (0 for large values)."""
    if is_nan(value) or value == 0:
        return digits - 1
    return max(digits - 1 - math.floor(math.log10(abs(value))), 0)


def mean_std(mean: float, std: float, fmt: Callable[[float], str]) -> str:
    """``mean ± std``; the mean alone when the std is undefined (one seed), — when there is no mean."""
    if is_nan(mean):
        return "—"
    return fmt(mean) if is_nan(std) else f"{fmt(mean)} ± {fmt(std)}"


def percent(value: float) -> str:
    """An accuracy fraction as a percentage with two decimals (0.9712 -> ``97.12``)."""
    return f"{100 * value:.2f}"


def cell(text: Any) -> str:
    """A markdown table cell: one line, pipes escaped."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def first_line(text: Any, limit: int = 200) -> str:
    if text is None or is_nan(text):
        return "(no error message)"
    line = next((line.strip() for line in str(text).splitlines() if line.strip()), "(empty error message)")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
