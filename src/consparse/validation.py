"""Small checks used by constructors so that bad config values fail before any compute.

Each check raises ``ParameterError(name, ...)`` with ``name`` the argument's path relative to the
object being built and the allowed range in its message; the config boundary adds the node's key
(``consparse.errors.config_key``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

from consparse.errors import ParameterError

T = TypeVar("T")


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_none: bool = False,
) -> None:
    """Raise ParameterError unless ``low <= value <= high`` (bounds optional, inclusivity configurable)."""
    if value is None:
        if allow_none:
            return
        raise ParameterError(name, f"a number is required, got null ({_describe(low, high, low_inclusive, high_inclusive)})")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(name, f"expected a number, got {value!r} ({_describe(low, high, low_inclusive, high_inclusive)})")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ParameterError(name, f"got {value!r}; allowed: {_describe(low, high, low_inclusive, high_inclusive)}")


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *, allow_none: bool = False) -> None:
    """Raise ParameterError unless ``value`` is an integer within ``[low, high]``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(name, f"expected an integer, got {value!r} ({_describe(low, high, True, True)})")
    check_range(name, value, low, high)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ParameterError unless ``value`` is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ParameterError(name, f"got {value!r}; allowed: {', '.join(repr(o) for o in options)}")


def check_density(name: str, value: Any, *, allow_none: bool = True) -> None:
    """A density is a fraction of weights kept: in (0, 1]."""
    check_range(name, value, 0.0, 1.0, low_inclusive=False, allow_none=allow_none)


def check_length(name: str, values: Sequence[Any], expected: int, what: str) -> None:
    """Raise ParameterError unless ``values`` has ``expected`` entries (``what`` says what they are for)."""
    if len(values) != expected:
        raise ParameterError(name, f"got {len(values)} values but there are {expected} {what}; give one value per {what.rstrip('s')} or a single number")


def check_known_keys(name: str, values: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise ParameterError naming the node ``name`` when ``values`` has keys outside ``allowed``."""
    known = list(allowed)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParameterError(name, f"unknown keys {unknown}; allowed: {', '.join(known)}")


def settings_from(cls: type[T], values: Mapping[str, Any] | None, exclude: Iterable[str] = ()) -> T:
    """The dataclass ``cls`` from a config mapping (``None``: its defaults); keys that are not its
    fields (after dropping ``exclude``) are a ParameterError naming the allowed ones."""
    excluded = set(exclude)
    chosen = {key: value for key, value in dict(values or {}).items() if key not in excluded}
    check_known_keys("", chosen, [f.name for f in fields(cls)])
    return cls(**chosen)


def _describe(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is None and high is None:
        return "any number"
    if high is None:
        return f"{'>=' if low_inclusive else '>'} {low}"
    if low is None:
        return f"{'<=' if high_inclusive else '<'} {high}"
    return f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
