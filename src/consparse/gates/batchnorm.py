"""BatchNorm after a channel-gated convolution: inactive channels leave it as exact zeros.

A standard BatchNorm after a convolution whose channel ``c`` is gated off outputs
``beta_c - gamma_c * mu_c / sigma_c``, not zero, so the gated network and a purged network without
channel ``c`` would differ. ``GatedBatchNorm2d`` multiplies its normalised, affine output by the
convolution's gate: an inactive channel is exactly zero after it, and the purged model simply
drops the channel (its fractional test gate is folded into the sliced BatchNorm's affine).

Why the gate sits after the BatchNorm rather than on the filter (where the authors' code puts it,
with a BatchNorm that skips inactive channels): with a gate ``z_c`` shared by the minibatch, a
BatchNorm in training mode divides it back out, ``BN(z h) = (h - mu) / sqrt(sigma^2 + eps / z^2)``,
so the task loss barely reaches the gate. Gating the BatchNorm output keeps the gate's effect on
the loss, and the channel's statistics stay those of the un-gated filter response, so running
statistics are valid whatever gate was sampled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from consparse.gates.hard_concrete import HardConcreteGate


class GatedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose output is multiplied by the gate of the convolution before it.

    The gate belongs to the convolution (its expected density counts that convolution's weights);
    this module only reads the sample the convolution drew in the same forward pass.
    """

    def __init__(self, num_features: int, gate: HardConcreteGate, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        if not affine:
            raise ValueError("GatedBatchNorm2d folds the gate into its affine parameters; affine must be true")
        if gate.log_alpha.shape != (num_features,):
            raise ValueError(f"GatedBatchNorm2d: a gate of shape {tuple(gate.log_alpha.shape)} "
                             f"does not match {num_features} channels")
        # Stored outside ``_modules``: the gate is a submodule of the convolution, and registering it
        # twice would put the same parameter under two names in the state_dict.
        self.__dict__["gate"] = gate

    @classmethod
    def from_batchnorm(cls, norm: nn.BatchNorm2d, gate: HardConcreteGate) -> GatedBatchNorm2d:
        """A gated BatchNorm sharing ``norm``'s parameters and statistics (no copy)."""
        gated = cls(norm.num_features, gate, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                    track_running_stats=norm.track_running_stats)
        for name, parameter in norm.named_parameters(recurse=False):
            setattr(gated, name, parameter)
        for name, buffer in norm.named_buffers(recurse=False):
            setattr(gated, name, buffer)
        return gated.train(norm.training)

    def channel_gate(self) -> torch.Tensor:
        """The gate the convolution drew in this forward pass."""
        if self.gate.current is None:
            raise RuntimeError("GatedBatchNorm2d ran before its gated convolution drew a gate")
        return self.gate.current

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BatchNorm2d.forward`` with the gate folded into the affine parameters.

        ``(x_hat * w + b) * z == x_hat * (w z) + b z``: folding costs two C-vectors instead of a
        multiplication over the whole activation.
        """
        self._check_input_dim(x)
        z = self.channel_gate()
        average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            average_factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight * z,
            self.bias * z,
            use_batch_stats,
            average_factor,
            self.eps,
        )
