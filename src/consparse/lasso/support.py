"""The support of each row on its path: coordinates, signs and the inverse of ``G_SS + delta I``.

On a piece of the path the support ``S`` and its signs ``s`` are fixed and ``w_S(lam) = p - lam u``
with ``p = G_SS^{-1} c_S``, ``u = G_SS^{-1} s_S``. Each row keeps the inverse of its ``G_SS``
(ridge included) and updates it by rank one when a coordinate joins (bordered inverse) or leaves;
``_refresh`` recomputes it from ``G_SS`` when rounding has drifted.

Linearly dependent columns (duplicated states, a state equal to a combination of others): a column
in the span of the support's columns would make ``G_SS`` singular (ill-conditioned to ``1/delta``
with the ridge) and its rounding breaks the path. Such a column never needs to join: its
correlation is a fixed combination of the support's, so once it reaches ``+-lam`` it stays there
and ``w_j = 0`` is optimal. It is *blocked* instead, until a coordinate leaves the support.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Squared distance of a column from the span of the support's columns, relative to its squared
# norm, under which it counts as linearly dependent on them (rounding of G_jj - g^T a is ~eps cond).
DEPENDENT = 1e-9


@dataclass
@dataclass
class PathBatch:
    """The path state of the rows being moved (a copy, written back when they stop)."""

    rows: torch.Tensor  # positions in the full state
    lam: torch.Tensor
    index: torch.Tensor  # rows x K support coordinates (valid below size)
    signs: torch.Tensor  # rows x K
    size: torch.Tensor  # rows
    inverse: torch.Tensor  # rows x K x K inverse of G_SS + delta I (zero on padding)
    tracked: torch.Tensor  # rows x C coordinates whose correlations are followed (the support among them)
    q: torch.Tensor  # rows x C correlations c - (G + delta I) w at lam, on the tracked coordinates
    slack: torch.Tensor  # rows x d lam - |q_j| at the last refresh for the untracked (inf elsewhere); rows x 0 unscreened
    moved: torch.Tensor  # |lam| travelled since the last refresh
    spent: torch.Tensor  # sum of distance x gamma since the last refresh (the untracked correlations' drift bound)
    last_join: torch.Tensor  # coordinate that joined at the previous knot (-1: none)
    last_drop: torch.Tensor  # coordinate that left at the previous knot (-1: none)
    knots: torch.Tensor
    target: torch.Tensor
    radius: torch.Tensor  # inf: no radius stop
    at_radius: torch.Tensor
    running: torch.Tensor  # False once the row has stopped (it waits for the next compaction)
    blocked: torch.Tensor  # rows x d: columns in the span of the support, kept out of it until a drop

    def take(self, keep: torch.Tensor) -> PathBatch:
        """The rows ``keep``, with the support arrays trimmed to their largest support."""
        taken = PathBatch(**{name: getattr(self, name)[keep] for name in BATCH_FIELDS})
        width = int(taken.size.max()) if taken.size.numel() else 0
        taken.index, taken.signs = taken.index[:, :width], taken.signs[:, :width]
        taken.inverse = taken.inverse[:, :width, :width]
        return taken


BATCH_FIELDS = tuple(PathBatch.__dataclass_fields__)


class SupportUpdates:
    """The support algebra of ``consparse.lasso.path.LassoPath`` (needs its ``problem`` and ``delta``)."""

    def _valid(self, batch: PathBatch) -> torch.Tensor:
        return torch.arange(batch.index.shape[1], device=self.device)[None, :] < batch.size[:, None]

    def _support_solve(self, batch: PathBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``p = G_SS^{-1} c_S`` and ``u = G_SS^{-1} s_S`` (support-shaped, zero on padding)."""
        valid = self._valid(batch)
        correlations = self.problem.correlations[batch.rows].gather(1, batch.index)
        rhs = torch.stack([torch.where(valid, correlations, 0.0), batch.signs], dim=2)
        if rhs.shape[1] == 0:
            return rhs[..., 0], rhs[..., 1]
        solution = torch.bmm(batch.inverse, rhs)
        return solution[..., 0], solution[..., 1]

    def _scatter(self, batch: PathBatch, values: torch.Tensor) -> torch.Tensor:
        return scatter(batch.index, self._valid(batch), values, self.problem.features)

    def _join(self, batch: PathBatch, joining: torch.Tensor, coordinate: torch.Tensor, sign: torch.Tensor) -> None:
        """Append ``coordinate[r]`` to the support of the ``joining`` rows (bordered inverse).

        A column in the span of the support's columns is blocked instead (see ``_dependent``).
        """
        gram = self.problem.gram
        cross = torch.where(self._valid(batch) & joining[:, None], gram[batch.index, coordinate[:, None]], 0.0)
        solved = torch.bmm(batch.inverse, cross[:, :, None])[:, :, 0]  # (G_SS + delta I)^{-1} g
        dependent = joining & self._dependent(coordinate, cross, solved)
        if bool(dependent.any()):
            blocked = dependent.nonzero().flatten()
            batch.blocked[blocked, coordinate[blocked]] = True
            joining = joining & ~dependent
            if not bool(joining.any()):
                return
            cross = torch.where(joining[:, None], cross, 0.0)
            solved = torch.where(joining[:, None], solved, 0.0)
        needed = int(batch.size[joining].max()) + 1
        width = batch.index.shape[1]
        if needed > width:
            batch.index, batch.signs, batch.inverse = padded(
                batch.index, batch.signs, batch.inverse, max(needed, width + width // 4 + 8)
            )
            wider = batch.index.shape[1] - width
            solved = torch.cat([solved, solved.new_zeros(solved.shape[0], wider)], dim=1)
            cross = torch.cat([cross, cross.new_zeros(cross.shape[0], wider)], dim=1)
        rows = joining.nonzero().flatten()
        joined, position = coordinate[rows], batch.size[rows]
        diagonal = gram[coordinate, coordinate] + self.delta
        # The Schur complement; rounding can make it non-positive for a (nearly) collinear column.
        floor = (self.delta + torch.finfo(self.dtype).eps) * diagonal.clamp_min(1.0)
        schur = torch.where(joining, torch.maximum(diagonal - (cross * solved).sum(dim=1), floor), 1.0)
        batch.inverse.baddbmm_(solved[:, :, None], (solved / schur[:, None])[:, None, :])
        # Row and column `position` are still zero (padding): the border goes into both.
        border = -solved[rows] / schur[rows, None]
        picked = torch.arange(rows.numel(), device=self.device)
        border[picked, position] = 1.0 / schur[rows]
        batch.inverse[rows, position, :] = border
        batch.inverse[rows, :, position] = border
        batch.index[rows, position] = joined
        batch.signs[rows, position] = sign[rows]
        batch.size[rows] += 1
        batch.last_join[rows] = joined

    def _dependent(self, coordinate: torch.Tensor, cross: torch.Tensor, solved: torch.Tensor) -> torch.Tensor:
        """Rows where column ``coordinate[r]`` of ``M`` lies in the span of the support's columns.

        With ``a = (G_SS + delta I)^{-1} g`` (``g = G_Sj``), ``||M_j - M_S a||^2 = G_jj - g^T a -
        delta ||a||^2`` exactly. When that is rounding-sized, ``M_j = M_S a`` and ``q_j = a^T q_S =
        lam a^T s_S`` on every piece while the support keeps its coordinates: a column that reaches
        ``+-lam`` there stays tied at ``+-lam`` with ``w_j = 0`` optimal, and joining it would make
        ``G_SS`` singular (with the ridge, ill-conditioned to ``1/delta``: the inverse's rounding
        then breaks the path). Such a column is blocked until a coordinate leaves the support.
        """
        diagonal = self.problem.gram[coordinate, coordinate]
        residual = diagonal - (cross * solved).sum(dim=1) - self.delta * (solved * solved).sum(dim=1)
        return residual <= DEPENDENT * diagonal

    def _drop(self, batch: PathBatch, rows: torch.Tensor, position: torch.Tensor) -> None:
        """Remove the support coordinate at ``position[r]`` of each row in ``rows``.

        The inverse of ``G_SS`` without coordinate p is ``Gi - Gi[:, p] Gi[p, :] / Gi[p, p]``
        (its row and column p are then zero); the last support coordinate moves into the hole.
        """
        where = position[rows]
        last = batch.size[rows] - 1
        batch.last_drop[rows] = batch.index[rows, where]
        # Without the coordinate the span shrinks: a blocked column may have to join again.
        batch.blocked[rows] = False
        picked = torch.arange(rows.numel(), device=self.device)
        inverse = batch.inverse[rows]
        column = inverse[picked, :, where]
        inverse = inverse - column[:, :, None] * column[:, None, :] / column[picked, where][:, None, None]
        # Move the last coordinate into position p (a symmetric permutation), then cut the last one off.
        width = inverse.shape[1]
        permutation = torch.arange(width, device=self.device).expand(rows.numel(), -1).clone()
        permutation[picked, where] = last
        permutation[picked, last] = where
        inverse = inverse.gather(1, permutation[:, :, None].expand(-1, -1, width)).gather(2, permutation[:, None, :].expand(-1, width, -1))
        keep = torch.arange(width, device=self.device)[None, :] < last[:, None]
        inverse = torch.where(keep[:, :, None] & keep[:, None, :], inverse, 0.0)
        index = batch.index[rows].gather(1, permutation)
        signs = batch.signs[rows].gather(1, permutation)
        batch.inverse[rows] = inverse
        batch.index[rows] = torch.where(keep, index, 0)
        batch.signs[rows] = torch.where(keep, signs, 0.0)
        batch.size[rows] = last

    def _refresh(self, batch: PathBatch, rows: torch.Tensor) -> None:
        """Recompute ``(G_SS + delta I)^{-1}`` of ``rows`` from the Gram matrix."""
        self.refreshes += int(rows.numel())
        width = batch.index.shape[1]
        valid = self._valid(batch)[rows]
        index = batch.index[rows]
        both = valid[:, :, None] & valid[:, None, :]
        eye = torch.eye(width, dtype=self.dtype, device=self.device)
        restricted = self.problem.gram[index[:, :, None], index[:, None, :]] + self.delta * eye
        factor, _ = torch.linalg.cholesky_ex(torch.where(both, restricted, eye))
        batch.inverse[rows] = torch.where(both, torch.cholesky_inverse(factor), 0.0)


def padded(
    index: torch.Tensor, signs: torch.Tensor, inverse: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support arrays widened to ``capacity`` (zero indices, signs and inverse entries)."""
    rows, width = index.shape
    extra = capacity - width
    wider = inverse.new_zeros(rows, capacity, capacity)
    wider[:, :width, :width] = inverse
    return (
        torch.cat([index, index.new_zeros(rows, extra)], dim=1),
        torch.cat([signs, signs.new_zeros(rows, extra)], dim=1),
        wider,
    )


def scatter(index: torch.Tensor, valid: torch.Tensor, values: torch.Tensor, features: int) -> torch.Tensor:
    """Support-shaped ``values`` (rows x K at ``index``) as a dense rows x ``features`` matrix."""
    full = values.new_zeros(values.shape[0], features)
    return full.scatter_add(1, index, torch.where(valid, values, 0.0))
