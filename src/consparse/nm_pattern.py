"""The N:M sparsity pattern: at most N non-zeros in every group of M consecutive input weights.

2:4 is the one sparse format NVIDIA Ampere and Hopper GPUs run faster with standard libraries
(``torch.sparse.to_sparse_semi_structured``, cuSPARSELt, TensorRT). The pattern is shared by the
Frank-Wolfe constraint set (``consparse.optim.constraints.nm``) and by pruning and deployment
(``consparse.compress.nm``), so it lives below both.

Groups run along the input dimension, as the hardware reads them: for a Linear weight ``(out, in)``
M consecutive entries of a row; for a convolution ``(out, in, kh, kw)`` M consecutive input channels
at one output channel and kernel position (the layout of NVIDIA's ASP and TensorRT). When the input
dimension is not a multiple of M, the last group of each row is shorter and holds at most N
non-zeros too: padding the input dimension with zeros to a multiple of M, which a deployment does
anyway, then gives a valid N:M tensor. A 1-D tensor is one row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from consparse.errors import ParameterError

_PATTERN = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


@dataclass(frozen=True)
class NMPattern:
    """N non-zeros at most in every group of M consecutive input weights (``1 <= n < m``)."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        """The fraction of weights kept, ``n / m`` (exact when the input dimension is a multiple of m)."""
        return self.n / self.m

    # ------------------------------------------------------------------ group views
    def grouped(self, tensor: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
        """``tensor`` as ``(rows, groups, m)``, the short last group of a row filled with ``pad``."""
        rows = _rows(tensor)
        width = rows.shape[1]
        padded_width = -(-width // self.m) * self.m
        if padded_width != width:
            rows = torch.nn.functional.pad(rows, (0, padded_width - width), value=pad)
        return rows.reshape(rows.shape[0], -1, self.m)

    def ungrouped(self, grouped: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The inverse of ``grouped`` for a tensor of ``shape`` (the padding dropped)."""
        width = shape[1] if len(shape) >= 2 else shape[0]
        rows = grouped.reshape(grouped.shape[0], -1)[:, :width]
        if len(shape) < 2:
            return rows.reshape(shape)
        moved = (shape[0], *shape[2:], shape[1])
        return rows.reshape(moved).movedim(-1, 1).contiguous()

    # ------------------------------------------------------------------ masks
    def keep_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Boolean mask (True = keep) of the ``n`` largest ``scores`` in every group (exactly ``n``,
        or the whole group when it is shorter)."""
        grouped = self.grouped(scores.detach().to(torch.float32), pad=-torch.inf)
        index = torch.topk(grouped, self.n, dim=-1, sorted=False).indices
        mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(-1, index, True)
        return self.ungrouped(mask, scores.shape)

    def group_nonzeros(self, tensor: torch.Tensor) -> torch.Tensor:
        """The number of non-zeros of every group, ``(rows, groups)``."""
        return (self.grouped(tensor.detach()) != 0).sum(dim=-1)

    def holds_for(self, tensor: torch.Tensor) -> bool:
        """Whether every group of ``tensor`` has at most ``n`` non-zeros."""
        return bool((self.group_nonzeros(tensor) <= self.n).all())

    def max_nonzeros(self, shape: torch.Size | tuple[int, ...]) -> int:
        """The most non-zeros a tensor of ``shape`` can hold under the pattern."""
        width = shape[1] if len(shape) >= 2 else shape[0]
        rows = 1
        for size in shape:
            rows *= size
        rows //= width
        full, rest = divmod(width, self.m)
        return rows * (full * self.n + min(self.n, rest))


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """``(rows, input dim)``: the input dimension (dim 1, or the only one) moved last."""
    if tensor.dim() < 2:
        return tensor.reshape(1, -1)
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def parse_nm(value: Any, name: str) -> NMPattern:
    """An ``NMPattern`` from ``"N:M"`` (or an ``NMPattern``); a one-line ParameterError naming ``name`` otherwise.

    YAML 1.1, which Hydra's files are read with, takes an unquoted ``2:4`` for the base-60 integer
    124; the error says so and asks for quotes (the command line keeps ``2:4`` a string).
    """
    if isinstance(value, NMPattern):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        minutes, seconds = divmod(value, 60)
        raise ParameterError(
            name,
            f"got the integer {value}, which is how YAML reads an unquoted {minutes}:{seconds} (a base-60 number); "
            f"quote it in YAML files: \"{minutes}:{seconds}\"",
        )
    match = _PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ParameterError(name, f"got {value!r}; expected \"N:M\" (N non-zeros in every M input weights), e.g. \"2:4\"")
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise ParameterError(name, f"got \"{n}:{m}\"; need 1 <= N < M (N = M keeps every weight), e.g. \"2:4\"")
    return NMPattern(n, m)
