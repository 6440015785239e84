"""BatchNorm after a channel-gated convolution: inactive channels leave it as exact zeros.

A standard BatchNorm after a convolution whose channel ``c`` is gated off outputs
``beta_c - gamma_c * mu_c / sigma_c``, not zero, so the gated network and a purged network without
channel ``c`` would differ. ``GatedBatchNorm2d`` is the BatchNorm after such a convolution, in one
of two placements of the gate (``GATE_PLACEMENTS``, chosen by ``method.gate_placement``):

* ``norm_output`` (the platform's default): the convolution is not gated; the BatchNorm multiplies
  its normalised, affine output by the gate. An inactive channel is exactly zero, and the purged
  model drops it (a fractional test gate is folded into the sliced BatchNorm's affine). With a gate
  ``z_c`` shared by the minibatch, a BatchNorm in training mode divides a gate placed before it back
  out, ``BN(z h) = (h - mu) / sqrt(sigma^2 + eps / z^2)``, so the task loss barely reaches such a
  gate; gating the output keeps the gate's effect on the loss, and running statistics stay those of
  the un-gated filter response, valid whatever gate was sampled.
* ``filter`` (the authors' code, ``L0Conv2d`` then ``L0BatchNorm2d``): the convolution multiplies its
  filter (and bias) by the gate; the BatchNorm normalises the channels whose gate is non-zero and
  leaves the others as the exact zeros they arrive as, with their running statistics untouched. The
  task loss reaches the gates only through BatchNorm's ``eps`` and the eval-mode statistics, so the
  gates move mostly under the constraint; the authors' gate learning rates (6 on CIFAR, 1 on
  ImageNet-scale data) were tuned for this. The purged model keeps the gate folded into the filter
  and slices the BatchNorm.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from consparse.gates.hard_concrete import HardConcreteGate

GATE_PLACEMENTS = ("norm_output", "filter")


@contextmanager
def active_channel_statistics(norm: nn.modules.batchnorm._BatchNorm, active: torch.Tensor) -> Iterator[None]:
    """Within: ``norm`` updates copies of its running statistics; after: only ``active`` channels' updates are kept.

    Copies, not an in-place repair afterwards: the batch-norm kernels save the running statistics
    for the backward pass, which an in-place change would invalidate.
    """
    originals = (norm.running_mean, norm.running_var)
    norm.running_mean, norm.running_var = originals[0].clone(), originals[1].clone()
    try:
        yield
    finally:
        updated = (norm.running_mean, norm.running_var)
        norm.running_mean, norm.running_var = originals
    with torch.no_grad():
        originals[0].copy_(torch.where(active, updated[0], originals[0]))
        originals[1].copy_(torch.where(active, updated[1], originals[1]))


class GatedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` after a channel-gated convolution, for either placement of the gate.

    Its normalised, affine output is multiplied by ``channel_scale()``: the gate itself
    (``norm_output``) or whether the gate is non-zero (``filter``, where the convolution applied the
    gate). The gate belongs to the convolution (its expected density counts that convolution's
    weights); this module only reads the sample the convolution drew in the same forward pass.
    """

    def __init__(self, num_features: int, gate: HardConcreteGate, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, placement: str = "norm_output") -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        if not affine:
            raise ValueError("GatedBatchNorm2d folds the gate into its affine parameters; affine must be true")
        if gate.log_alpha.shape != (num_features,):
            raise ValueError(f"GatedBatchNorm2d: a gate of shape {tuple(gate.log_alpha.shape)} "
                             f"does not match {num_features} channels")
        if placement not in GATE_PLACEMENTS:
            raise ValueError(f"GatedBatchNorm2d: placement {placement!r} is not one of {GATE_PLACEMENTS}")
        # Stored outside ``_modules``: the gate is a submodule of the convolution, and registering it
        # twice would put the same parameter under two names in the state_dict.
        self.__dict__["gate"] = gate
        self.placement = placement

    @classmethod
    def from_batchnorm(cls, norm: nn.modules.batchnorm._BatchNorm, gate: HardConcreteGate,
                       placement: str = "norm_output") -> GatedBatchNorm2d:
        """A gated BatchNorm sharing ``norm``'s parameters and statistics (no copy)."""
        gated = cls(norm.num_features, gate, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                    track_running_stats=norm.track_running_stats, placement=placement)
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

    def scale_for(self, z: torch.Tensor) -> torch.Tensor:
        """What multiplies the affine output for gate ``z``: ``z`` (norm_output) or ``z != 0`` (filter)."""
        return z if self.placement == "norm_output" else (z > 0).to(z.dtype)

    def channel_scale(self) -> torch.Tensor:
        return self.scale_for(self.channel_gate())

    def deterministic_scale(self) -> torch.Tensor:
        """``channel_scale`` for the deterministic test gate (what folding and purging multiply in)."""
        return self.scale_for(self.gate.test_gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``BatchNorm2d.forward`` with the gate folded into the affine parameters.

        ``(x_hat * w + b) * z == x_hat * (w z) + b z``: folding costs two C-vectors instead of a
        multiplication over the whole activation. With the ``filter`` placement the running
        statistics of inactive channels are put back after the update (the authors' BatchNorm skips them).
        """
        self._check_input_dim(x)
        z = self.channel_scale()
        average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            average_factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        skip_inactive = self.placement == "filter" and self.training and self.track_running_stats
        with active_channel_statistics(self, z > 0) if skip_inactive else nullcontext():
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
