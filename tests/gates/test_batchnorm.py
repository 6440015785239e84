"""GatedBatchNorm2d: channels gated off are exact zeros (a standard BatchNorm would not give zeros)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.gates import GatedBatchNorm2d, GatedConv2d


def _conv_and_norm() -> tuple[GatedConv2d, GatedBatchNorm2d]:
    torch.manual_seed(0)
    conv = GatedConv2d.from_conv(nn.Conv2d(3, 6, 3, padding=1), structured=True, droprate_init=0.5)
    norm = nn.BatchNorm2d(6)
    with torch.no_grad():
        norm.bias.fill_(0.7)
        conv.gate.log_alpha.copy_(torch.tensor([-4.0, -4.0, 0.0, 1.0, 4.0, 4.0]))
    conv.gate_applied_by_norm = True
    return conv, GatedBatchNorm2d.from_batchnorm(norm, conv.gate)


def test_inactive_channels_are_exactly_zero_in_training_and_eval() -> None:
    conv, norm = _conv_and_norm()
    x = torch.randn(4, 3, 5, 5)
    for training in (True, False):
        conv.train(training), norm.train(training)
        out = norm(conv(x))
        z = conv.gate.current
        assert torch.all(out[:, z == 0] == 0)
        assert torch.all(out[:, z > 0].abs().sum(dim=(0, 2, 3)) > 0)


def test_output_is_the_standard_batchnorm_times_the_gate() -> None:
    conv, norm = _conv_and_norm()
    conv.eval(), norm.eval()
    x = torch.randn(2, 3, 5, 5)
    plain = nn.BatchNorm2d(6).eval()
    plain.load_state_dict(norm.state_dict())
    raw = conv._conv_forward(x, conv.weight, conv.bias)
    expected = plain(raw) * conv.gate.test_gate().view(1, -1, 1, 1)
    torch.testing.assert_close(norm(conv(x)), expected)
    # A standard BatchNorm after a zero channel is not zero: why the gate goes after the norm.
    with torch.no_grad():
        assert float(plain(torch.zeros(1, 6, 2, 2))[0, 0].abs().max()) > 0


def test_shares_parameters_and_statistics_with_the_batchnorm_it_replaces() -> None:
    conv, _ = _conv_and_norm()
    norm = nn.BatchNorm2d(6)
    gated = GatedBatchNorm2d.from_batchnorm(norm, conv.gate)
    assert gated.weight is norm.weight and gated.running_mean is norm.running_mean
    assert "gate.log_alpha" not in gated.state_dict()


def test_running_before_the_convolution_is_an_error() -> None:
    conv, norm = _conv_and_norm()
    conv.gate.current = None
    with pytest.raises(RuntimeError, match="before its gated convolution"):
        norm(torch.zeros(1, 6, 2, 2))
