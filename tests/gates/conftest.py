"""Shared by the gates tests: every architecture the platform gates (at test size) and gate helpers.

A test taking an ``architecture`` argument runs once per architecture (resnet50 marked slow); the
``architectures`` fixture maps a name to ``(builder, input shape, default gated layer count)`` and
``gate_helpers`` gives ``scramble`` (spread log_alpha) and ``warm`` (BatchNorm statistics).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from consparse.gates import gated_layers
from consparse.models.lenet import LeNet5
from consparse.models.mlp import MLP
from consparse.models.resnet import CifarResNet, resnet18, resnet50
from consparse.models.wide_resnet import WideResNet

MNIST = (1, 28, 28)
SMALL_RGB = (3, 16, 16)

# name -> (builder, input shape, number of gated layers with the default choice)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "mlp": (lambda: MLP(list(MNIST), 10), MNIST, 3),
    "lenet5": (lambda: LeNet5(list(MNIST), 10), MNIST, 4),
    "resnet18": (lambda: resnet18(list(SMALL_RGB), 10), SMALL_RGB, 16),
    "resnet20": (lambda: CifarResNet(list(SMALL_RGB), 10), SMALL_RGB, 18),
    "resnet50": (lambda: resnet50(list(SMALL_RGB), 10), SMALL_RGB, 48),
    "wrn16_2": (lambda: WideResNet(list(SMALL_RGB), 10, depth=16, widen_factor=2, dropout=0.3), SMALL_RGB, 6),
}


def scramble_gates(model: nn.Module, seed: int = 0) -> None:
    """Spread log_alpha over [-4, 4]: some test gates 0, some fractional, some 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.gate.log_alpha.copy_(torch.rand(layer.gate.log_alpha.shape, generator=generator) * 8 - 4)


def warm_batchnorm(model: nn.Module, input_shape: tuple[int, ...], steps: int = 2) -> None:
    """A few training-mode forward passes so that BatchNorm running statistics are not the defaults."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(8, *input_shape) * 2 + 0.5)
    model.eval()


SLOW_ARCHITECTURES = ("resnet50",)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "architecture" in metafunc.fixturenames:
        names = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ARCHITECTURES else n for n in ARCHITECTURES]
        metafunc.parametrize("architecture", names)


@pytest.fixture
def architectures() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]]:
    return ARCHITECTURES


@pytest.fixture
def gate_helpers() -> SimpleNamespace:
    return SimpleNamespace(scramble=scramble_gates, warm=warm_batchnorm)
