"""A matrix applied to a slice of a feature-major buffer, stored dense or as CSR, whichever is faster.

``SparseLinear`` computes ``W @ buffer[start:start + columns] + bias`` (and may write into a given
output view), where the buffer holds one column per sample. Feature-major layout makes every slice
of states contiguous for any batch, which is what lets a deployed implicit model write each level's
states in place and read all earlier ones without a gather, and it is the layout torch's sparse
kernels take (``sparse @ dense``).

Formats:

* ``dense``: a ``(rows, columns)`` weight; ``columns`` is trimmed to the span of nonzero columns.
* ``csr``: ``torch.sparse_csr_tensor`` of the nonzeros (``values``, ``col_indices``,
  ``crow_indices`` in the state_dict, so an export stores plain tensors). Its cost follows the
  nonzeros but carries a fixed overhead of a few microseconds per product, so it pays only when
  the matrix is sparse enough and large enough.

``choose_format`` decides by timing both forms of the actual matrix on this machine at the batch
sizes a deployment serves (``measure``), or by ``THRESHOLD_DENSITY`` and ``THRESHOLD_SIZE``
(``threshold``), which came out of such timings on one CPU thread.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

FORMATS = ("dense", "csr")
CHOICES = ("measure", "threshold", *FORMATS)
# ``threshold``: CSR below this nonzero fraction, for matrices of at least THRESHOLD_SIZE entries.
THRESHOLD_DENSITY = 0.1
THRESHOLD_SIZE = 32768
# Seconds each candidate format is timed per batch size by ``choose_format("measure")``, in blocks.
MEASURE_SECONDS = 0.02
MEASURE_BLOCKS = 5


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch warns that CSR is beta and that invariant checks are off; the indices come from to_sparse_csr.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def to_csr(dense: torch.Tensor) -> torch.Tensor:
    """``dense.to_sparse_csr()`` without torch's warning that CSR support is beta."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return dense.to_sparse_csr()


class SparseLinear(nn.Module):
    """``W @ buffer[start:start + columns] + bias`` with ``W`` (rows x columns) dense or CSR.

    Args:
        rows, columns: the shape of ``W``.
        start: first buffer row ``W`` reads.
        nnz: stored nonzeros (``csr`` only; the dense weight keeps its zeros).
        format: ``dense`` or ``csr``.
        bias: whether a bias vector is added.
    """

    def __init__(self, rows: int, start: int, columns: int, nnz: int = 0, format: str = "dense", bias: bool = True) -> None:
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.rows, self.start, self.columns, self.format = int(rows), int(start), int(columns), format
        if format == "dense":
            self.weight = nn.Parameter(torch.zeros(self.rows, self.columns), requires_grad=False)
        else:
            self.values = nn.Parameter(torch.zeros(int(nnz)), requires_grad=False)
            # 32-bit indices: MKL's sparse kernels run about a third faster on them than on 64-bit ones.
            self.register_buffer("col_indices", torch.zeros(int(nnz), dtype=torch.int32))
            self.register_buffer("crow_indices", torch.zeros(self.rows + 1, dtype=torch.int32))
        self.bias = nn.Parameter(torch.zeros(self.rows), requires_grad=False) if bias else None
        self._cache: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The cached CSR tensor has no storage deepcopy or pickle could copy; it is rebuilt on use.
        state = dict(super().__getstate__())
        state["_cache"] = None
        return state

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, format: str, start: int = 0) -> SparseLinear:
        """The kernel of ``weight`` (rows x buffer width from ``start``), trimmed to its nonzero columns."""
        weight = weight.detach()
        used = torch.nonzero((weight != 0).any(dim=0)).flatten()
        low, high = (int(used[0]), int(used[-1]) + 1) if used.numel() else (0, 0)
        trimmed = weight[:, low:high]
        csr = to_csr(trimmed) if format == "csr" else None
        nnz = int(csr.values().numel()) if csr is not None else 0
        kernel = cls(weight.shape[0], start + low, high - low, nnz, format, bias is not None)
        kernel.to(weight.dtype)
        with torch.no_grad():
            if csr is None:
                kernel.weight.copy_(trimmed)
            else:
                kernel.values.copy_(csr.values())
                kernel.col_indices.copy_(csr.col_indices())
                kernel.crow_indices.copy_(csr.crow_indices())
            if bias is not None:
                kernel.bias.copy_(bias.detach())
        return kernel

    def constructor_kwargs(self) -> dict[str, Any]:
        nnz = self.values.numel() if self.format == "csr" else 0
        return {"rows": self.rows, "start": self.start, "columns": self.columns, "nnz": nnz,
                "format": self.format, "bias": self.bias is not None}

    def matrix(self) -> torch.Tensor:
        """``W`` as the tensor the product uses.

        The CSR tensor is built once and shares its parts' memory, so loading a state_dict (an
        in-place copy) reaches it; moving or casting the module (``_apply``) drops it.
        """
        if self.format == "dense":
            return self.weight
        if self._cache is None:
            self._cache = _csr(self.crow_indices, self.col_indices, self.values, (self.rows, self.columns))
        return self._cache

    def _apply(self, fn: Any, recurse: bool = True) -> SparseLinear:
        self._cache = None
        return super()._apply(fn, recurse)

    def dense_weight(self) -> torch.Tensor:
        """``W`` as a dense ``(rows, columns)`` tensor."""
        return self.weight.detach() if self.format == "dense" else self.matrix().detach().to_dense()

    def stored_weights(self) -> torch.Tensor:
        """The stored entries of ``W``: CSR values, or the dense weight with its zeros."""
        return self.weight if self.format == "dense" else self.values

    def forward(self, buffer: torch.Tensor, out: torch.Tensor | None = None, add: torch.Tensor | None = None) -> torch.Tensor:
        """``W @ buffer[start:start+columns] + (add if given else bias)``, into ``out`` when given.

        A 1-D buffer (one sample) is a matrix-vector product: torch's (and MKL's) ``addmv`` is about
        twice as fast as ``addmm`` on a single column, dense or CSR.
        """
        source = buffer[self.start:self.start + self.columns]
        if add is None:
            add = self.bias if self.bias is not None else source.new_zeros(self.rows)
            if buffer.dim() == 2:
                add = add[:, None]
        if out is None:
            out = source.new_empty((self.rows, *source.shape[1:]))
        if buffer.dim() == 1:
            return torch.addmv(add, self.matrix(), source, out=out)
        return torch.addmm(add, self.matrix(), source, out=out)

    def extra_repr(self) -> str:
        return f"rows={self.rows}, start={self.start}, columns={self.columns}, format={self.format}"


def _seconds(kernel: SparseLinear, buffer: torch.Tensor) -> float:
    """Seconds per product: the fastest of ``MEASURE_BLOCKS`` timed blocks (a block preempted by
    another process on a shared machine is slower, never faster)."""
    out = buffer.new_empty((kernel.rows, *buffer.shape[1:]))
    kernel(buffer, out)
    block_seconds = MEASURE_SECONDS / MEASURE_BLOCKS
    fastest = math.inf
    for _ in range(MEASURE_BLOCKS):
        passes, elapsed = 0, 0.0
        start = time.perf_counter()
        while elapsed < block_seconds or passes < 2:
            kernel(buffer, out)
            passes += 1
            elapsed = time.perf_counter() - start
        fastest = min(fastest, elapsed / passes)
    return fastest


def choose_format(
    weight: torch.Tensor, choice: str = "measure", batch_sizes: Sequence[int] = (1, 64), threads: int = 1
) -> str:
    """``dense`` or ``csr`` for ``weight`` (rows x columns, zeros included).

    ``measure`` times both forms on random buffers at each batch size (``threads`` CPU threads) and
    keeps the one with the smaller geometric mean of times; ``threshold`` uses ``THRESHOLD_DENSITY``
    and ``THRESHOLD_SIZE``; ``dense`` and ``csr`` are taken as given.
    """
    if choice not in CHOICES:
        raise ValueError(f"format choice must be one of {CHOICES}, got {choice!r}")
    if choice in FORMATS:
        return choice
    nonzero = int(torch.count_nonzero(weight))
    if weight.numel() == 0 or nonzero == 0:
        return "dense"
    if choice == "threshold":
        sparse = nonzero / weight.numel() < THRESHOLD_DENSITY and weight.numel() >= THRESHOLD_SIZE
        return "csr" if sparse else "dense"
    candidates = {name: SparseLinear.from_weight(weight.cpu(), None, name) for name in FORMATS}
    generator = torch.Generator().manual_seed(0)
    log_seconds = dict.fromkeys(FORMATS, 0.0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                shape = (weight.shape[1],) if batch == 1 else (weight.shape[1], batch)
                buffer = torch.randn(shape, generator=generator, dtype=weight.dtype)
                for name, kernel in candidates.items():
                    log_seconds[name] += math.log(_seconds(kernel, buffer))
    finally:
        torch.set_num_threads(previous)
    return min(FORMATS, key=lambda name: log_seconds[name])
