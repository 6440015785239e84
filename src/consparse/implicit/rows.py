"""Many constrained LASSO rows solved in fixed chunks, split across DDP ranks, gathered on all of them.

The rows of each problem (the rows of ``[A B]``, or one conv layer's output channels) are cut into
chunks of ``row_batch`` rows, numbered in a fixed order; chunk ``i`` is solved by rank
``i % world_size`` and the results are gathered on every rank. A chunk's result depends only on
its rows (never on which rank solves it or on the world size), so a run on several processes
returns exactly what one process returns. Each chunk keeps its ``LassoPath`` between solves, which
is the warm start across radii (the outer search for a density target).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from consparse.implicit.bisection import ConstrainedLassoSolution, SearchSettings, constrained_lasso
from consparse.implicit.lasso import LassoPath, LassoProblem, PathSettings


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
        path: numerical settings of each chunk's ``LassoPath``.
    """

    def __init__(self, blocks: list[RowBlock], row_batch: int, path: PathSettings | None = None) -> None:
        self.blocks = blocks
        self.rank, self.world_size = process_group()
        self.chunks: list[tuple[int, slice]] = [
            (number, slice(start, min(start + row_batch, block.problem.rows)))
            for number, block in enumerate(blocks)
            for start in range(0, block.problem.rows, row_batch)
        ]
        self.paths = {
            chunk: LassoPath(blocks[number].problem.select(rows), path or PathSettings(), blocks[number].mask)
            for chunk, (number, rows) in enumerate(self.chunks)
            if chunk % self.world_size == self.rank
        }
        self.seconds = 0.0

    @property
    def rows(self) -> int:
        return sum(block.problem.rows for block in self.blocks)

    def solve(self, radii: list[torch.Tensor], search: SearchSettings) -> list[ConstrainedLassoSolution]:
        """Every block's solution for its rows' radii (one tensor per block), gathered on all ranks.

        ``seconds`` becomes the longest rank's solve time (the wall time of the split solve).
        """
        start = time.perf_counter()
        local = {
            chunk: _to_cpu(constrained_lasso(path, radii[self.chunks[chunk][0]][self.chunks[chunk][1]], search))
            for chunk, path in self.paths.items()
        }
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


def _to_cpu(solution: ConstrainedLassoSolution) -> ConstrainedLassoSolution:
    names = ConstrainedLassoSolution.__dataclass_fields__
    return ConstrainedLassoSolution(**{name: getattr(solution, name).cpu() for name in names})
