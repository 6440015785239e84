"""Batch-norm synchronisation across DDP ranks that keeps the gates of gated BatchNorms.

``trainer.sync_batchnorm`` (set by ``hardware=multigpu`` and ``hardware=slurm``) makes Lightning
replace every BatchNorm by ``nn.SyncBatchNorm`` for the fit and, afterwards, by a generic
``_BatchNormXd``. For a gated network both steps break it: a ``GatedBatchNorm2d`` becomes a plain
SyncBatchNorm, so the gates of the convolution before it stop acting on the forward pass, and the
purge after fit no longer finds the gated BatchNorm it must slice.

``SyncBatchNormKeepingGates`` is the Lightning plugin that converts instead: a ``GatedBatchNorm2d``
becomes a ``GatedSyncBatchNorm2d`` (synchronised statistics, then the same gate), any other
BatchNorm a ``SyncBatchNorm``; every converted layer shares the original's parameters and buffers
and is turned back into its original class after the fit.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from consparse.gates.batchnorm import GatedBatchNorm2d, active_channel_statistics
from consparse.gates.hard_concrete import HardConcreteGate


class GatedSyncBatchNorm2d(nn.SyncBatchNorm):
    """``SyncBatchNorm`` whose output is multiplied by the gate of the convolution before it.

    The form a ``GatedBatchNorm2d`` takes while its statistics are synchronised across ranks. The
    gate multiplies the synchronised output (``(x_hat w + b) z``) rather than being folded into the
    affine parameters: SyncBatchNorm's forward reads ``weight`` and ``bias`` itself.
    """

    def __init__(self, num_features: int, gate: HardConcreteGate, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group: object | None = None,
                 placement: str = "norm_output") -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, process_group=process_group)
        # Outside ``_modules``, as in GatedBatchNorm2d: the gate belongs to the convolution.
        self.__dict__["gate"] = gate
        self.placement = placement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate.current is None:
            raise RuntimeError("GatedSyncBatchNorm2d ran before its gated convolution drew a gate")
        z = self.gate.current
        scale = GatedBatchNorm2d.scale_for(self, z)
        skip_inactive = self.placement == "filter" and self.training and self.track_running_stats
        with active_channel_statistics(self, scale > 0) if skip_inactive else nullcontext():
            return super().forward(x) * scale.view(1, -1, 1, 1)


def _share_state(source: _BatchNorm, target: _BatchNorm) -> _BatchNorm:
    """``target`` with ``source``'s Parameters and buffers (the same objects) and training mode."""
    for name, parameter in source.named_parameters(recurse=False):
        setattr(target, name, parameter)
    for name, buffer in source.named_buffers(recurse=False):
        setattr(target, name, buffer)
    return target.train(source.training)


def convert_sync_batchnorm(module: nn.Module, process_group: object | None = None) -> nn.Module:
    """``module`` with every BatchNorm synchronised (in place below the root; returns the new root).

    ``GatedBatchNorm2d`` becomes ``GatedSyncBatchNorm2d``, any other BatchNorm ``nn.SyncBatchNorm``;
    each remembers its original class for ``revert_sync_batchnorm``.
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        options = {"eps": module.eps, "momentum": module.momentum, "affine": module.affine,
                   "track_running_stats": module.track_running_stats, "process_group": process_group}
        if isinstance(module, GatedBatchNorm2d):
            synced = GatedSyncBatchNorm2d(module.num_features, module.gate, placement=module.placement, **options)
        else:
            synced = nn.SyncBatchNorm(module.num_features, **options)
        synced.original_class = type(module)
        return _share_state(module, synced)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """The inverse of ``convert_sync_batchnorm`` (SyncBatchNorms it did not create stay as they are)."""
    original = getattr(module, "original_class", None)
    if isinstance(module, nn.SyncBatchNorm) and original is not None:
        if isinstance(module, GatedSyncBatchNorm2d):
            return GatedBatchNorm2d.from_batchnorm(module, module.gate, placement=module.placement)
        return _share_state(module, original(module.num_features, eps=module.eps, momentum=module.momentum,
                                             affine=module.affine, track_running_stats=module.track_running_stats))
    for name, child in module.named_children():
        module.add_module(name, revert_sync_batchnorm(child))
    return module


class SyncBatchNormKeepingGates(TorchSyncBatchNorm):
    """Lightning's ``sync_batchnorm`` plugin, converting with ``convert_sync_batchnorm`` (module docstring)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return revert_sync_batchnorm(model)
