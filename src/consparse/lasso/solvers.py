"""The constrained-LASSO solvers by name, and their settings from one config block.

Every solver is constructed as ``Solver(problem, settings, mask)`` and answers ``solve(radius)``
with a ``ConstrainedLassoSolution``, keeping its state between solves (the warm start across radii).
Its ``Settings`` dataclass declares every key it reads and validates them; ``handles_mask`` says
whether it can constrain only part of each row (``constrain: A``). The active set cannot (its closed
form assumes the penalty and the radius count the same coordinates), so a masked block goes to the
exact path with the active set's ``fallback`` settings.

The ``solver:`` block of a config names the solver under ``step`` and may carry the keys of every
solver (``conf/method/implicit_lasso.yaml`` lists them all): the chosen solver's settings take its
own keys, the other solvers' keys are left to them, and any other key is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Protocol

import torch

from consparse.errors import ParameterError
from consparse.lasso.active_set import ActiveSet
from consparse.lasso.problem import LassoProblem
from consparse.lasso.search import PathSearch
from consparse.lasso.solution import ConstrainedLassoSolution


class ConstrainedSolver(Protocol):
    """What every registered solver provides."""

    Settings: type
    handles_mask: bool

    def __init__(self, problem: LassoProblem, settings: Any, mask: torch.Tensor | None = None) -> None: ...

    def solve(self, radius: float | torch.Tensor) -> ConstrainedLassoSolution: ...


SOLVERS: dict[str, type[ConstrainedSolver]] = {
    "active_set": ActiveSet,
    "path": PathSearch,
    "newton": PathSearch,
    "bisect": PathSearch,
}
DEFAULT_SOLVER = "active_set"


def get_solver(name: str) -> type[ConstrainedSolver]:
    """The solver class registered as ``name``."""
    if name not in SOLVERS:
        raise KeyError(f"no constrained-LASSO solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[name]


def solver_settings(block: Mapping[str, Any] | None) -> Any:
    """The settings of the solver a config block names under ``step`` (default ``active_set``).

    Raises ``ParameterError`` (naming the entry) for an unknown solver, a key no solver reads, or a
    bad value.
    """
    values = dict(block or {})
    name = values.get("step", DEFAULT_SOLVER)
    if name not in SOLVERS:
        raise ParameterError("step", f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    own = {field.name for field in fields(get_solver(name).Settings)}
    anyone = {field.name for solver in SOLVERS.values() for field in fields(solver.Settings)}
    for entry in values:
        if entry not in anyone:
            raise ParameterError(entry, f"unknown key; the solver keys are {', '.join(sorted(anyone))}")
    settings = get_solver(name).Settings(**{entry: value for entry, value in values.items() if entry in own and entry != "step"}, step=name)
    settings.validate()
    return settings


def make_solver(settings: Any, problem: LassoProblem, mask: torch.Tensor | None = None) -> ConstrainedSolver:
    """The solver ``settings.step`` for ``problem``; a masked problem goes to the path if the solver cannot take it."""
    solver = get_solver(settings.step)
    if mask is not None and not solver.handles_mask:
        settings = settings.fallback
        solver = get_solver(settings.step)
    return solver(problem, settings, mask)
