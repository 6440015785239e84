"""The group-k-support norm ball: the k-support norm of the vector of group (filter / neuron) norms."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from consparse.errors import ParameterError
from consparse.optim.constraints.base import ConstraintSet, resolve_k, safe_ratio
from consparse.optim.constraints.ksupport import ksupport_norm_rows


class GroupKSupportNormBall(ConstraintSet):
    """``conv{V : at most k groups nonzero, ||V||_F <= radius}``.

    Groups are the output filters of a convolution or the output neurons of a Linear layer (slices
    along dim 0), or, for a global constraint over several flattened tensors, contiguous segments of
    the given ``group_sizes`` (the filters of each tensor in turn).

    LMO: the ``k`` groups with the largest gradient norm, ``V = -radius G_sel / ||G_sel||_F``
    (exactly ``k`` groups: the SFW code's ``>= threshold`` keeps more on ties). Norm: the k-support
    norm of the group norms. L2 diameter ``2 radius``. ``k`` is a fraction of the groups or a count.
    """

    kind = "group_ksupport"

    def __init__(
        self,
        shape: Sequence[int],
        radius: float,
        k: float = 1.0,
        group_sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(shape, radius)
        self.group_sizes = self.check_groups(self.shape, group_sizes)
        self.n_groups = len(self.group_sizes) if self.group_sizes is not None else self.shape[0]
        self.k = resolve_k(k, self.n_groups)
        self._group_ids: torch.Tensor | None = None

    @staticmethod
    def check_groups(shape: torch.Size, group_sizes: Sequence[int] | None) -> list[int] | None:
        """Validated segment lengths (None: the slices along dim 0 of a tensor with >= 2 dims)."""
        if group_sizes is None:
            if len(shape) < 2:
                raise ParameterError(
                    "table",
                    f"group_ksupport groups the output filters/neurons of a weight (>= 2 dims), got shape {tuple(shape)}",
                )
            return None
        sizes = [int(s) for s in group_sizes]
        total = 1
        for d in shape:
            total *= d
        if any(s < 1 for s in sizes) or sum(sizes) != total:
            raise ValueError(
                f"group_sizes must be positive and sum to {total} entries, got a sum of {sum(sizes)}"
            )
        return sizes

    def _ids(self, device: torch.device) -> torch.Tensor:
        if self._group_ids is None or self._group_ids.device != device:
            sizes = torch.tensor(self.group_sizes, device=device)
            self._group_ids = torch.repeat_interleave(
                torch.arange(len(self.group_sizes), device=device), sizes
            )
        return self._group_ids

    def group_norms(self, x: torch.Tensor) -> torch.Tensor:
        """The L2 norm of every group of ``x`` (a vector of ``n_groups``)."""
        if self.group_sizes is None:
            return torch.linalg.vector_norm(x.reshape(self.n_groups, -1), dim=1)
        squares = torch.zeros(self.n_groups, dtype=x.dtype, device=x.device)
        return squares.index_add_(0, self._ids(x.device), x.reshape(-1) ** 2).sqrt()

    def _entry_mask(self, chosen: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Expand a per-group 0/1 vector to the entries of ``x``."""
        if self.group_sizes is None:
            return chosen.reshape(-1, *([1] * (len(self.shape) - 1))).expand(self.shape)
        return chosen[self._ids(x.device)].reshape(self.shape)

    def lmo(self, grad: torch.Tensor) -> torch.Tensor:
        self._check_shape(grad)
        chosen = torch.zeros(self.n_groups, dtype=grad.dtype, device=grad.device)
        chosen[torch.topk(self.group_norms(grad), self.k, sorted=False).indices] = 1.0
        selected = grad * self._entry_mask(chosen, grad)
        return -self.radius * safe_ratio(selected, torch.linalg.vector_norm(selected))

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return ksupport_norm_rows(self.group_norms(x).reshape(1, -1), self.k)[0]

    @property
    def diameter(self) -> float:
        return 2.0 * self.radius

    @classmethod
    def radius_for_diameter(
        cls, diameter: float, shape: Sequence[int], k: float = 1.0, group_sizes: Sequence[int] | None = None
    ) -> float:
        return diameter / 2.0

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k, "groups": self.n_groups}
