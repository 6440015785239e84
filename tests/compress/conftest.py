"""Fixtures for the compress tests: tiny models built here (of the model zoo only the MLP is used)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from consparse.models.mlp import MLP


def tiny_cnn(bias: bool = True) -> nn.Sequential:
    """conv(3->8) BN ReLU conv(8->12, stride 2, dilation) ReLU pool flatten fc(12->5): 3x8x8 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    )


def lenet_like() -> nn.Sequential:
    """LeNet-5 of the L0 paper on 1x28x28: conv20-pool-conv50-pool-fc500-fc10."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def tiny_resnet() -> nn.Sequential:
    """stem conv-BN-ReLU, one torchvision BasicBlock (8 channels), pool, classifier: 3x8x8 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine values (fresh ones are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture
def mnist_mlp() -> MLP:
    torch.manual_seed(0)
    return MLP([1, 28, 28], 10, hidden=(300, 100))


@pytest.fixture
def small_mlp() -> MLP:
    torch.manual_seed(0)
    return MLP([12], 4, hidden=(16, 8))


@pytest.fixture
def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return randomise_batchnorm(tiny_cnn())


@pytest.fixture
def lenet() -> nn.Sequential:
    torch.manual_seed(0)
    return lenet_like()


@pytest.fixture
def small_resnet() -> nn.Sequential:
    torch.manual_seed(0)
    return randomise_batchnorm(tiny_resnet())


@pytest.fixture
def watch() -> Callable[[nn.Module], Callable[[], None]]:
    """``check = watch(model)``; later ``check()`` asserts that the model's state and mode are unchanged."""

    def start(model: nn.Module) -> Callable[[], None]:
        snapshot = {key: value.detach().clone() for key, value in model.state_dict().items()}
        training = model.training

        def check() -> None:
            state = model.state_dict()
            assert state.keys() == snapshot.keys()
            for key, value in snapshot.items():
                assert torch.equal(state[key], value), f"{key} was modified"
            assert model.training == training

        return check

    return start
