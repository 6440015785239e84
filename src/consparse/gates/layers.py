"""Linear and convolution layers with hard-concrete gates.

Structured gates follow the L0 papers: a ``GatedLinear`` has one gate per **input neuron** (a
column of its weight), a ``GatedConv2d`` one gate per **output channel** (a filter and its bias).
Unstructured gates are one per weight. Biases of Linear layers and of unstructured layers are not
gated.

A structured convolution followed by a BatchNorm either leaves its gate to that BatchNorm
(``GatedBatchNorm2d`` multiplies its own output by the gate; placement ``norm_output``) or gates
its filter as usual, the BatchNorm skipping inactive channels (placement ``filter``, the authors'):
see ``batchnorm.py``.

Both classes subclass the standard layer, so ``weight`` and ``bias`` keep their names and shapes
and the shared counting code sees them as ordinary Linear / Conv weights. Densities are counted
over weights only (not biases), the platform's definition of a sparsifiable weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from consparse.gates.hard_concrete import HardConcreteGate


class GatedLayer:
    """What expected-density bookkeeping, weight decay, folding and purging need from a gated layer."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    gate: HardConcreteGate
    structured: bool

    @property
    def weights_per_gate(self) -> int:
        return self.weight.numel() // self.gate.log_alpha.numel()

    def expected_active_weights(self) -> torch.Tensor:
        """Expected number of weights whose gate is non-zero (differentiable in ``log_alpha``)."""
        return self.gate.prob_active().sum() * self.weights_per_gate

    def test_active_weights(self) -> int:
        """Number of weights whose deterministic test gate is non-zero."""
        return int((self.gate.test_gate() > 0).sum()) * self.weights_per_gate

    def gate_per_weight(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` broadcast to the weight's shape."""
        raise NotImplementedError

    def gate_per_bias(self, z: torch.Tensor) -> torch.Tensor | None:
        """``z`` broadcast to the bias (None when the bias is not gated)."""
        raise NotImplementedError

    def expected_l2(self) -> torch.Tensor:
        """``sum P(z != 0) * w^2`` over weights (and gated biases) with the probabilities detached.

        Detaching (the authors' ``l2_detach_gates=True``) keeps weight decay from pushing gates.
        """
        q = self.gate.prob_active().detach()
        total = (self.gate_per_weight(q) * self.weight.pow(2)).sum()
        if self.bias is not None:
            bias_gate = self.gate_per_bias(q)
            total = total + (self.bias.pow(2) if bias_gate is None else bias_gate * self.bias.pow(2)).sum()
        return total

    def folded_weight(self) -> torch.Tensor:
        """The weight multiplied by the test gates it carries itself."""
        return self.weight * self.gate_per_weight(self.gate.test_gate())

    def folded_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        bias_gate = self.gate_per_bias(self.gate.test_gate())
        return self.bias if bias_gate is None else self.bias * bias_gate


class GatedLinear(nn.Linear, GatedLayer):
    """``y = (W * z) x + b`` with ``z`` per input neuron (structured) or per weight.

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        structured: one gate per input neuron (True) or per weight (False).
        droprate_init: initial drop rate of the gates, in (0, 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        structured: bool = True,
        droprate_init: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.structured = structured
        shape = (in_features,) if structured else (out_features, in_features)
        self.gate = HardConcreteGate(shape, droprate_init, device=device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, structured: bool, droprate_init: float) -> GatedLinear:
        """A gated layer sharing ``linear``'s weight and bias Parameters (no copy)."""
        # Built on the meta device so that no weight is allocated and initialised only to be replaced.
        gated = cls(linear.in_features, linear.out_features, bias=False, structured=structured,
                    droprate_init=droprate_init, device="meta")
        gated.weight = linear.weight
        gated.bias = linear.bias
        gated.gate = HardConcreteGate(gated.gate.shape, droprate_init, device=linear.weight.device)
        return gated

    def gate_per_weight(self, z: torch.Tensor) -> torch.Tensor:
        return z.unsqueeze(0) if self.structured else z

    def gate_per_bias(self, z: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gate()
        # Gating the inputs costs batch x in multiplications, gating the weight in x out (and as much backward).
        if self.structured:
            return F.linear(x * z, self.weight, self.bias)
        return F.linear(x, self.weight * z, self.bias)


class GatedConv2d(nn.Conv2d, GatedLayer):
    """A convolution with one gate per output channel (structured) or per weight.

    A structured gate multiplies the output channel (filter response plus bias), or, when
    ``gate_applied_by_norm`` is set, is left to the BatchNorm that follows.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as for ``nn.Conv2d``.
        structured: one gate per output channel (True) or per weight (False).
        droprate_init: initial drop rate of the gates, in (0, 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | str | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        structured: bool = True,
        droprate_init: float = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device, dtype=dtype)
        self.structured = structured
        self.gate_applied_by_norm = False
        shape = (out_channels,) if structured else tuple(self.weight.shape)
        self.gate = HardConcreteGate(shape, droprate_init, device=device)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, structured: bool, droprate_init: float) -> GatedConv2d:
        """A gated layer sharing ``conv``'s weight and bias Parameters (no copy)."""
        gated = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=False, padding_mode=conv.padding_mode,
                    structured=structured, droprate_init=droprate_init, device="meta")
        gated.weight = conv.weight
        gated.bias = conv.bias
        gated.gate = HardConcreteGate(gated.gate.shape, droprate_init, device=conv.weight.device)
        return gated

    def gate_per_weight(self, z: torch.Tensor) -> torch.Tensor:
        return z.view(-1, 1, 1, 1) if self.structured else z

    def gate_per_bias(self, z: torch.Tensor) -> torch.Tensor | None:
        return z if self.structured else None

    def folded_weight(self) -> torch.Tensor:
        return self.weight if self.gate_applied_by_norm else super().folded_weight()

    def folded_bias(self) -> torch.Tensor | None:
        return self.bias if self.gate_applied_by_norm else super().folded_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gate()
        if self.gate_applied_by_norm:
            return self._conv_forward(x, self.weight, self.bias)
        # Gating filter and bias equals gating the output channel, at the cost of the (small) filter bank.
        bias_gate = self.gate_per_bias(z)
        bias = self.bias if self.bias is None or bias_gate is None else self.bias * bias_gate
        return self._conv_forward(x, self.weight * self.gate_per_weight(z), bias)
