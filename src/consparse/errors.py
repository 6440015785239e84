"""Errors that carry a message meant for the user, not a traceback."""

from __future__ import annotations


class ConsparseError(Exception):
    """Base class: the message says what was wrong and what to do."""


class ConfigError(ConsparseError, ValueError):
    """A config value is invalid. ``field`` is the dotted config key (``method.target_density``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class DataNotFoundError(ConsparseError, FileNotFoundError):
    """Dataset files are missing and cannot be downloaded; the message names the expected paths."""


class RunDirError(ConsparseError):
    """The run directory belongs to another run or cannot be resumed."""


class TrainingDiverged(ConsparseError):
    """The training loss stopped being finite; the message names the step and the likely cause."""
