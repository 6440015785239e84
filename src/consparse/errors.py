"""Errors that carry a message meant for the user, not a traceback.

Library code (a model, a method, a constraint set, a solver) knows its own arguments, not where the
config put it: it raises ``ParameterError(name, message)`` with ``name`` relative to the object being
built (``dual_lr``, ``constraint.value``). The config boundary, where a node becomes an object, adds
the node's key (``config_key("method")``) and raises ``ConfigError`` with the full dotted key, which
the entry points print as ``consparse: error: <key>: <message>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field


class ConsparseError(Exception):
    """Base class: the message says what was wrong and what to do."""


def join_key(prefix: str, name: str) -> str:
    """``prefix.name``; either part may be empty (the node itself, or no prefix)."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


class ConfigError(ConsparseError, ValueError):
    """A config value is invalid. ``field`` is the dotted config key (``method.target_density``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ParameterError(ConfigError):
    """An argument of a library object is invalid. ``name`` is the argument's path relative to the
    object being built (``value``, ``constraint.value``; empty: the object's node as a whole).

    A ConfigError whose key is not complete yet: code that calls the ``consparse.validation`` checks
    with a full key (the report's options) is caught by ``except ConfigError`` as before.
    """

    def __init__(self, name: str, message: str):
        ConsparseError.__init__(self, f"{name}: {message}" if name else message)
        self.name = self.field = name
        self.message = message


@contextmanager
def parameter_prefix(prefix: str) -> Iterator[None]:
    """Inside, a ``ParameterError`` gains ``prefix`` in front of its name: how an object that builds
    another from one of its arguments (a method's ``constraint``) reports the inner object's errors."""
    try:
        yield
    except ParameterError as error:
        raise ParameterError(join_key(prefix, error.name), error.message) from None


@dataclass(frozen=True)
class ConfigPlace:
    """Where in the config an object was built: its node's ``key``, and the keys of the arguments
    the boundary passed in code (a method's ``model`` comes from the ``model`` node, not ``method``)."""

    key: str
    arguments: Mapping[str, str] = field(default_factory=dict)

    def full_key(self, name: str) -> str:
        head, _, rest = name.partition(".")
        if head in self.arguments:
            return join_key(self.arguments[head], rest)
        return join_key(self.key, name)


@contextmanager
def config_key(place: str | ConfigPlace | None) -> Iterator[None]:
    """The config boundary: inside, a ``ParameterError`` becomes a ``ConfigError`` whose key is the
    node's key followed by the error's relative name. ``None`` (an object built in code, outside any
    config) leaves errors as they are."""
    if place is None:
        yield
        return
    where = place if isinstance(place, ConfigPlace) else ConfigPlace(place)
    try:
        yield
    except ParameterError as error:
        raise ConfigError(where.full_key(error.name), error.message) from None


class DataNotFoundError(ConsparseError, FileNotFoundError):
    """Dataset files are missing and cannot be downloaded; the message names the expected paths."""


class RunDirError(ConsparseError):
    """The run directory belongs to another run or cannot be resumed."""


class TrainingDiverged(ConsparseError):
    """The training loss stopped being finite; the message names the step and the likely cause."""
