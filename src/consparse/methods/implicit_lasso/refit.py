"""Many constrained LASSO rows solved in fixed chunks, split across DDP ranks, gathered on all of them.

The rows of each problem (the rows of ``[A B]``, or one conv layer's output channels) are cut into
chunks of ``row_batch`` rows, numbered in a fixed order; chunk ``i`` is solved by rank
``i % world_size`` and the results are gathered on every rank. A chunk's result depends only on
its rows (never on which rank solves it or on the world size), so a run on several processes
returns exactly what one process returns. Each chunk keeps its solver (``consparse.lasso.solvers``)
between solves, which is the warm start across radii (the outer search for a density target).

A block with a ``mask`` (``constrain: A``) is solved by a solver that can constrain part of a row:
the exact path when the configured one cannot (``make_solver``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from consparse.lasso.active_set import ActiveSetSettings
from consparse.lasso.problem import LassoProblem
from consparse.lasso.solution import ConstrainedLassoSolution
from consparse.lasso.solvers import ConstrainedSolver, make_solver


@dataclass
class RowBlock:
    """One design shared by many rows.

    Attributes:
        name: what the rows are (for messages).
        problem: the LASSO statistics.
        mask: the coordinates the radius counts (None: all).
        free: the coordinates well-posedness does not constrain, which ``debias`` may refit (None: all).
    """

    name: str
    problem: LassoProblem
    mask: torch.Tensor | None = None
    free: torch.Tensor | None = None


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RowSolver:
    """Chunked, rank-split constrained LASSO over several row blocks.

    Args:
        blocks: the problems; their statistics must be identical on every rank.
        row_batch: rows per chunk (the unit of batching and of the split across ranks).
        settings: the solver's settings (``consparse.lasso.solvers.solver_settings``; default: the
            active set's defaults).
    """

    def __init__(self, blocks: list[RowBlock], row_batch: int, settings: Any = None) -> None:
        self.blocks = blocks
        self.settings = ActiveSetSettings() if settings is None else settings
        self.rank, self.world_size = process_group()
        self.chunks: list[tuple[int, slice]] = [
            (number, slice(start, min(start + row_batch, block.problem.rows)))
            for number, block in enumerate(blocks)
            for start in range(0, block.problem.rows, row_batch)
        ]
        self.mine = [chunk for chunk in range(len(self.chunks)) if chunk % self.world_size == self.rank]
        # Created at the first solve, then kept (the warm start across radii).
        self.solvers: dict[int, ConstrainedSolver] = {}
        self.seconds = 0.0

    @property
    def rows(self) -> int:
        return sum(block.problem.rows for block in self.blocks)

    def solve(self, radii: list[torch.Tensor]) -> list[ConstrainedLassoSolution]:
        """Every block's solution for its rows' radii (one tensor per block), gathered on all ranks.

        ``seconds`` becomes the longest rank's solve time (the wall time of the split solve).
        """
        start = time.perf_counter()
        local = {chunk: self._solve_chunk(chunk, radii).to("cpu") for chunk in self.mine}
        elapsed = time.perf_counter() - start
        if self.world_size > 1:
            everything: list[tuple[dict[int, ConstrainedLassoSolution], float] | None] = [None] * self.world_size
            dist.all_gather_object(everything, (local, elapsed))
            local = {chunk: solution for part, _ in everything for chunk, solution in part.items()}
            elapsed = max(seconds for _, seconds in everything)
        self.seconds = elapsed
        return [
            ConstrainedLassoSolution.concatenate([local[chunk] for chunk, (block, _) in enumerate(self.chunks) if block == number])
            for number in range(len(self.blocks))
        ]

    def _solve_chunk(self, chunk: int, radii: list[torch.Tensor]) -> ConstrainedLassoSolution:
        number, rows = self.chunks[chunk]
        block = self.blocks[number]
        if chunk not in self.solvers:
            self.solvers[chunk] = make_solver(self.settings, block.problem.select(rows), block.mask)
        return self.solvers[chunk].solve(radii[number][rows])
