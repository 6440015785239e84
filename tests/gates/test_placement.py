"""The two placements of a convolution's gate before a BatchNorm (``method.gate_placement``).

``norm_output`` gates the BatchNorm's output; ``filter`` (the authors' code) gates the filter and
lets the BatchNorm skip inactive channels. Both must purge exactly: the purged model equals the
gated model in eval mode.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from consparse.errors import ParameterError
from consparse.gates import GatedBatchNorm2d, GatedConv2d, fold_gates, gate_model, purge, seeded_gate_noise
from consparse.gates.sync_batchnorm import GatedSyncBatchNorm2d, SyncBatchNormKeepingGates
from consparse.models.wide_resnet import WideResNet

PLACEMENTS = ("norm_output", "filter")
BATCHNORM_ARCHITECTURES = ("resnet18", "resnet20", "resnet50", "wrn16_2")


def _gated(architectures, gate_helpers, name: str, placement: str) -> tuple[nn.Module, tuple[int, ...]]:
    builder, shape, _ = architectures[name]
    torch.manual_seed(0)
    model = builder()
    gate_model(model, placement=placement)
    gate_helpers.scramble(model)
    gate_helpers.warm(model, shape)
    return model, shape


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_purged_equals_gated_in_eval_mode_for_both_placements(architecture: str, placement: str, architectures,
                                                                gate_helpers) -> None:
    model, shape = _gated(architectures, gate_helpers, architecture, placement)
    purged = purge(model, shape)
    folded = fold_gates(model)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(purged(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(folded.eval()(x), expected, atol=1e-5, rtol=0)
    if architecture in BATCHNORM_ARCHITECTURES:
        assert sum(p.numel() for p in purged.parameters()) < sum(p.numel() for p in folded.parameters())


def test_filter_placement_gates_the_filter_and_tells_the_batchnorm() -> None:
    model = WideResNet([3, 8, 8], 10, depth=10, widen_factor=1)
    gate_model(model, placement="filter")
    block = model.layer1[0]
    assert isinstance(block.conv1, GatedConv2d) and not block.conv1.gate_applied_by_norm
    assert isinstance(block.bn2, GatedBatchNorm2d) and block.bn2.placement == "filter"
    other = WideResNet([3, 8, 8], 10, depth=10, widen_factor=1)
    gate_model(other)
    assert other.layer1[0].conv1.gate_applied_by_norm and other.layer1[0].bn2.placement == "norm_output"


def _filter_pair() -> tuple[GatedConv2d, GatedBatchNorm2d]:
    torch.manual_seed(0)
    conv = GatedConv2d.from_conv(nn.Conv2d(3, 6, 3, padding=1), structured=True, droprate_init=0.5)
    norm = nn.BatchNorm2d(6)
    with torch.no_grad():
        norm.bias.fill_(0.7)
        norm.running_mean.fill_(0.25)
        norm.running_var.fill_(2.0)
        conv.gate.log_alpha.copy_(torch.tensor([-4.6, -4.6, 0.0, 1.0, 4.6, 4.6]))
    return conv, GatedBatchNorm2d.from_batchnorm(norm, conv.gate, placement="filter")


def test_filter_placement_skips_inactive_channels_and_their_statistics() -> None:
    conv, norm = _filter_pair()
    x = torch.randn(4, 3, 5, 5)
    conv.train(), norm.train()
    with torch.no_grad():
        out = norm(conv(x))
    z = conv.gate.current
    inactive = z == 0
    assert bool(inactive.any()) and bool((~inactive).any())
    assert torch.all(out[:, inactive] == 0)
    assert torch.all(norm.running_mean[inactive] == 0.25) and torch.all(norm.running_var[inactive] == 2.0)
    assert not torch.any(norm.running_mean[~inactive] == 0.25)
    # Active channels: a standard BatchNorm of the gated filter's response, so the gate cancels
    # up to BatchNorm's eps (why the authors' gate learning rates are large).
    raw = conv._conv_forward(x, conv.weight, conv.bias)
    standard = nn.functional.batch_norm(raw, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    torch.testing.assert_close(out[:, ~inactive], standard[:, ~inactive], atol=2e-3, rtol=0)


def test_filter_placement_in_eval_uses_running_statistics_of_the_gated_response() -> None:
    conv, norm = _filter_pair()
    conv.eval(), norm.eval()
    x = torch.randn(2, 3, 5, 5)
    z = conv.gate.test_gate()
    raw = conv._conv_forward(x, conv.weight * z.view(-1, 1, 1, 1), conv.bias * z)
    plain = nn.BatchNorm2d(6).eval()
    plain.load_state_dict(norm.state_dict())
    expected = plain(raw) * (z > 0).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(norm(conv(x)), expected)


def test_unknown_placement_is_a_config_error() -> None:
    with pytest.raises(ParameterError, match="gate_placement"):
        gate_model(WideResNet([3, 8, 8], 10, depth=10, widen_factor=1), placement="before_norm")


def test_filter_placement_survives_batchnorm_synchronisation() -> None:
    torch.manual_seed(0)
    model = WideResNet([3, 8, 8], 10, depth=10, widen_factor=2)
    gate_model(model, placement="filter")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("log_alpha"):
                parameter.copy_(torch.linspace(-3.0, 3.0, parameter.numel()))
    reference = copy.deepcopy(model)
    plugin = SyncBatchNormKeepingGates()
    synced = plugin.apply(model)
    norm = synced.layer1[0].bn2
    assert isinstance(norm, GatedSyncBatchNorm2d) and norm.placement == "filter"
    x = torch.randn(4, 3, 8, 8)
    for training in (True, False):
        synced.train(training), reference.train(training)
        with seeded_gate_noise(synced, 3), seeded_gate_noise(reference, 3), torch.no_grad():
            torch.testing.assert_close(synced(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(synced.layer1[0].bn2.running_var, reference.layer1[0].bn2.running_var)
    reverted = plugin.revert(synced)
    assert isinstance(reverted.layer1[0].bn2, GatedBatchNorm2d) and reverted.layer1[0].bn2.placement == "filter"


@pytest.mark.parametrize("synchronised", [False, True], ids=["batchnorm", "sync_batchnorm"])
def test_filter_placement_trains_backward(synchronised: bool) -> None:
    torch.manual_seed(0)
    model = WideResNet([3, 8, 8], 10, depth=10, widen_factor=2)
    gate_model(model, placement="filter")
    if synchronised:
        model = SyncBatchNormKeepingGates().apply(model)
    model.train()
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    conv = model.layer1[0].conv1
    assert conv.weight.grad is not None and bool(conv.weight.grad.abs().sum() > 0)
