"""Batch-norm synchronisation (``trainer.sync_batchnorm``) keeps the gates of gated residual networks.

SyncBatchNorm only synchronises on GPUs inside a process group; here (one CPU process) it computes
what BatchNorm computes, which is what lets the conversion be checked output for output.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn

from consparse.gates import GatedBatchNorm2d, gate_model, purge, seeded_gate_noise
from consparse.gates.sync_batchnorm import GatedSyncBatchNorm2d, SyncBatchNormKeepingGates
from consparse.models.resnet import CifarResNet
from consparse.models.wide_resnet import WideResNet

SHAPE = (3, 16, 16)


def _gated(network: str) -> nn.Module:
    torch.manual_seed(0)
    if network == "wrn16_2":
        model = WideResNet(list(SHAPE), 10, depth=16, widen_factor=2, dropout=0.0)
    else:
        model = CifarResNet(list(SHAPE), 10)
    gate_model(model, structured=True, droprate_init=0.3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("log_alpha"):
                parameter.copy_(torch.linspace(-3.0, 3.0, parameter.numel()))
    return model


def _classes(model: nn.Module) -> dict[str, type]:
    return {name: type(module) for name, module in model.named_modules()}


def test_lightnings_own_conversion_drops_the_gates() -> None:
    """Why the platform has its own plugin: Lightning's leaves no gated BatchNorm for the purge."""
    model = TorchSyncBatchNorm().revert(TorchSyncBatchNorm().apply(_gated("wrn16_2")))
    assert not any(isinstance(module, GatedBatchNorm2d) for module in model.modules())
    with pytest.raises(TypeError, match="_BatchNormXd"):
        purge(model.eval(), SHAPE)


@pytest.mark.parametrize("network", ["wrn16_2", "resnet20"])
def test_gated_batchnorms_survive_synchronisation_and_its_reversal(network: str) -> None:
    model = _gated(network)
    reference = copy.deepcopy(model)
    before = _classes(model)
    parameters = dict(model.named_parameters())
    gated_norms = [name for name, cls in before.items() if cls is GatedBatchNorm2d]
    assert gated_norms, "the architecture should have gated BatchNorms"

    plugin = SyncBatchNormKeepingGates()
    synced = plugin.apply(model)
    during = _classes(synced)
    for name, cls in before.items():
        if cls is GatedBatchNorm2d:
            assert during[name] is GatedSyncBatchNorm2d, name
        elif issubclass(cls, nn.modules.batchnorm._BatchNorm):
            assert during[name] is nn.SyncBatchNorm, name
    # The optimiser's Parameters are the ones the synchronised layers train.
    assert all(parameter is parameters[name] for name, parameter in synced.named_parameters())

    x = torch.randn(6, *SHAPE)
    for training in (True, False):
        synced.train(training), reference.train(training)
        with seeded_gate_noise(synced, 7), seeded_gate_noise(reference, 7):
            torch.testing.assert_close(synced(x), reference(x), rtol=1e-5, atol=1e-5)
    # The gates act: switching a gated channel off changes the synchronised network's output.
    synced.eval()
    norm = dict(synced.named_modules())[gated_norms[0]]
    with torch.no_grad():
        out = synced(x)
        norm.gate.log_alpha.fill_(-10.0)
        assert not torch.allclose(synced(x), out)
        norm.gate.log_alpha.copy_(dict(reference.named_modules())[gated_norms[0]].gate.log_alpha)

    reverted = plugin.revert(synced)
    assert _classes(reverted) == before
    assert all(parameter is parameters[name] for name, parameter in reverted.named_parameters())
    reverted.eval(), reference.eval()
    purged = purge(reverted, SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(purged(x), reference(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in purged.parameters()) < sum(p.numel() for p in reference.parameters())
