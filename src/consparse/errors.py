"""Errors that carry a message meant for the user, not a traceback.

Library code (a model, a method, a constraint set, a solver) knows its own arguments, not where the
config put it: it raises ``ParameterError(name, message)`` with ``name`` relative to the object being
built (``dual_lr``, ``constraint.value``). The config boundary, where a node becomes an object, adds
the node's key (``config_key("method")``) and raises ``ConfigError`` with the full dotted key, which
the entry points print as ``consparse: error: <key>: <message>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class ConsparseError(Exception):
    """Base class: the message says what was wrong and what to do."""


def join_key(prefix: str, name: str) -> str:
    """``prefix.name``; either part may be empty (the node itself, or no prefix)."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


class ParameterError(ConsparseError, ValueError):
    """An argument of a library object is invalid. ``name`` is the argument's path relative to the
    object being built (``value``, ``constraint.value``; empty: the object's node as a whole)."""

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message
        super().__init__(f"{name}: {message}" if name else message)


class ConfigError(ConsparseError, ValueError):
    """A config value is invalid. ``field`` is the dotted config key (``method.target_density``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@contextmanager
def parameter_prefix(prefix: str) -> Iterator[None]:
    """Inside, a ``ParameterError`` gains ``prefix`` in front of its name: how an object that builds
    another from one of its arguments (a method's ``constraint``) reports the inner object's errors."""
    try:
        yield
    except ParameterError as error:
        raise ParameterError(join_key(prefix, error.name), error.message) from None


@contextmanager
def config_key(key: str | None) -> Iterator[None]:
    """The config boundary: inside, a ``ParameterError`` becomes a ``ConfigError`` whose key is
    ``key`` followed by the error's relative name. ``None`` (an object built outside a config) leaves
    errors as they are."""
    if key is None:
        yield
        return
    try:
        yield
    except ParameterError as error:
        raise ConfigError(join_key(key, error.name), error.message) from None


class DataNotFoundError(ConsparseError, FileNotFoundError):
    """Dataset files are missing and cannot be downloaded; the message names the expected paths."""


class RunDirError(ConsparseError):
    """The run directory belongs to another run or cannot be resumed."""


class TrainingDiverged(ConsparseError):
    """The training loss stopped being finite; the message names the step and the likely cause."""
