"""Small checks used by constructors so that bad config values fail before any compute.

Each check names the config key (``field``) and the allowed range in its message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from consparse.errors import ConfigError


def check_range(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_none: bool = False,
) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (bounds optional, inclusivity configurable)."""
    if value is None:
        if allow_none:
            return
        raise ConfigError(field, f"a number is required, got null ({_describe(low, high, low_inclusive, high_inclusive)})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"expected a number, got {value!r} ({_describe(low, high, low_inclusive, high_inclusive)})")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ConfigError(field, f"got {value!r}; allowed: {_describe(low, high, low_inclusive, high_inclusive)}")


def check_int(field: str, value: Any, low: int | None = None, high: int | None = None, *, allow_none: bool = False) -> None:
    """Raise ConfigError unless ``value`` is an integer within ``[low, high]``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"expected an integer, got {value!r} ({_describe(low, high, True, True)})")
    check_range(field, value, low, high)


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ConfigError(field, f"got {value!r}; allowed: {', '.join(repr(o) for o in options)}")


def check_density(field: str, value: Any, *, allow_none: bool = True) -> None:
    """A density is a fraction of weights kept: in (0, 1]."""
    check_range(field, value, 0.0, 1.0, low_inclusive=False, allow_none=allow_none)


def check_length(field: str, values: Sequence[Any], expected: int, what: str) -> None:
    """Raise ConfigError unless ``values`` has ``expected`` entries (``what`` says what they are for)."""
    if len(values) != expected:
        raise ConfigError(field, f"got {len(values)} values but there are {expected} {what}; give one value per {what.rstrip('s')} or a single number")


def _describe(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is None and high is None:
        return "any number"
    if high is None:
        return f"{'>=' if low_inclusive else '>'} {low}"
    if low is None:
        return f"{'<=' if high_inclusive else '<'} {high}"
    return f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
