"""Many constrained LASSO rows solved in fixed chunks, split across DDP ranks, gathered on all of them.

The rows of each problem (the rows of ``[A B]``, or one conv layer's output channels) are cut into
chunks of ``row_batch`` rows, numbered in a fixed order; chunk ``i`` is solved by rank
``i % world_size`` and the results are gathered on every rank. A chunk's result depends only on
its rows (never on which rank solves it or on the world size), so a run on several processes
returns exactly what one process returns. Each chunk keeps its solver (an ``ActiveSet``, or a
``LassoPath`` for the path's steps) between solves, which is the warm start across radii (the
outer search for a density target).

A block with a ``mask`` (``constrain: A``) is always solved on the path: its radius counts only
some coordinates while the penalty applies to all, and the path's "first crossing from the feasible
side" is not a point the active set's closed form singles out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from consparse.lasso.active_set import ActiveSet, ActiveSetSettings
from consparse.lasso.search import ConstrainedLassoSolution, SearchSettings, constrained_lasso
from consparse.lasso.path import LassoPath, LassoProblem, PathSettings


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
        path: numerical settings of each chunk's ``LassoPath`` (and of the active set's fallback).
        active_set: settings of each chunk's ``ActiveSet``.
    """

    def __init__(
        self,
        blocks: list[RowBlock],
        row_batch: int,
        path: PathSettings | None = None,
        active_set: ActiveSetSettings | None = None,
    ) -> None:
        self.blocks = blocks
        self.path_settings = path or PathSettings()
        self.active_set_settings = active_set or ActiveSetSettings()
        self.rank, self.world_size = process_group()
        self.chunks: list[tuple[int, slice]] = [
            (number, slice(start, min(start + row_batch, block.problem.rows)))
            for number, block in enumerate(blocks)
            for start in range(0, block.problem.rows, row_batch)
        ]
        self.mine = [chunk for chunk in range(len(self.chunks)) if chunk % self.world_size == self.rank]
        # Created at the first solve that needs them, then kept (the warm start across radii).
        self.paths: dict[int, LassoPath] = {}
        self.active_sets: dict[int, ActiveSet] = {}
        self.seconds = 0.0

    @property
    def rows(self) -> int:
        return sum(block.problem.rows for block in self.blocks)

    def solve(self, radii: list[torch.Tensor], search: SearchSettings) -> list[ConstrainedLassoSolution]:
        """Every block's solution for its rows' radii (one tensor per block), gathered on all ranks.

        ``seconds`` becomes the longest rank's solve time (the wall time of the split solve).
        """
        start = time.perf_counter()
        local = {chunk: _to_cpu(self._solve_chunk(chunk, radii, search)) for chunk in self.mine}
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

    def _solve_chunk(self, chunk: int, radii: list[torch.Tensor], search: SearchSettings) -> ConstrainedLassoSolution:
        number, rows = self.chunks[chunk]
        block = self.blocks[number]
        radius = radii[number][rows]
        if search.step == "active_set" and block.mask is None:
            if chunk not in self.active_sets:
                self.active_sets[chunk] = ActiveSet(block.problem.select(rows), self.active_set_settings, self.path_settings)
            return self.active_sets[chunk].solve(radius, search)
        if search.step == "active_set":
            search = replace(search, step="path")
        if chunk not in self.paths:
            self.paths[chunk] = LassoPath(block.problem.select(rows), self.path_settings, block.mask)
        return constrained_lasso(self.paths[chunk], radius, search)


def _to_cpu(solution: ConstrainedLassoSolution) -> ConstrainedLassoSolution:
    names = ConstrainedLassoSolution.__dataclass_fields__
    return ConstrainedLassoSolution(**{name: getattr(solution, name).cpu() for name in names})
