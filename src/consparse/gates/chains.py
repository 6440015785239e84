"""Where gates can go: the chains of layers through which neurons and channels flow one to one.

Gating and purging need to know which layer consumes which layer's outputs. Every model of the
platform is made of two kinds of chains (see ``consparse.models``):

* a ``nn.Sequential`` whose children are all chain elements (Linear, Conv2d, BatchNorm, ReLU,
  pooling, Dropout, Flatten, Identity): ``mlp.layers``, ``lenet5.layers``;
* the residual branch of a residual block, listed in ``BLOCK_LAYOUTS`` (torchvision's
  ``BasicBlock`` / ``Bottleneck`` and the Wide ResNet block): its output is added to a shortcut, so
  it must keep the block's full width.

Layers outside chains (ResNet stems, shortcut projections, the classifier after global pooling)
are never gated. One table of block layouts, not one copy of each model, is what makes
``gate_model`` and ``purge`` work for mlp, lenet5, resnet18/20/50 and wrn28_10 alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from torchvision.models import resnet as tv_resnet

from consparse.models.wide_resnet import WideBasicBlock

# Modules that map channel c (or feature c) of their input to channel c of their output, and zero to zero.
POINTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
WEIGHTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)
CHAIN_ELEMENTS: tuple[type[nn.Module], ...] = (*WEIGHTED, *NORMS, *POINTWISE, nn.Flatten)


@dataclass(frozen=True)
class BlockLayout:
    """The residual branch of a block type: attribute names in forward order, and the convs the
    L0 paper gates (``gated``)."""

    branch: tuple[str, ...]
    gated: tuple[str, ...]


BLOCK_LAYOUTS: dict[type[nn.Module], BlockLayout] = {
    tv_resnet.BasicBlock: BlockLayout(("conv1", "bn1", "relu", "conv2", "bn2"), ("conv1", "conv2")),
    tv_resnet.Bottleneck: BlockLayout(
        ("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"), ("conv1", "conv2", "conv3")
    ),
    # Pre-activation: bn1/relu1 act on the block input, which the shortcut shares; the paper gates conv1 only.
    WideBasicBlock: BlockLayout(("conv1", "bn2", "relu2", "dropout", "conv2"), ("conv1",)),
}


@dataclass
class Chain:
    """Consecutive slots of ``owner`` (attribute names, in forward order) forming one chain.

    ``residual``: the chain's output is added to a shortcut and must keep its full width.
    ``default_gated``: slots gated when the user does not choose.
    """

    name: str
    owner: nn.Module
    slots: list[str]
    residual: bool
    default_gated: tuple[str, ...]

    def module(self, slot: str) -> nn.Module:
        return getattr(self.owner, slot)

    def slot_path(self, slot: str) -> str:
        return f"{self.name}.{slot}" if self.name else slot

    def weighted_slots(self) -> list[str]:
        return [slot for slot in self.slots if isinstance(self.module(slot), WEIGHTED)]


def _is_sequential_chain(module: nn.Module) -> bool:
    children = list(module.children())
    return (
        isinstance(module, nn.Sequential)
        and any(isinstance(child, WEIGHTED) for child in children)
        and all(isinstance(child, CHAIN_ELEMENTS) for child in children)
    )


def find_chains(model: nn.Module) -> list[Chain]:
    """Every chain of ``model`` in module order (a module belongs to at most one chain)."""
    return list(_chains(model, ""))


def _chains(module: nn.Module, prefix: str) -> Iterator[Chain]:
    layout = next((layout for kind, layout in BLOCK_LAYOUTS.items() if type(module) is kind), None)
    if layout is not None:
        yield Chain(prefix, module, list(layout.branch), residual=True, default_gated=layout.gated)
        return
    if _is_sequential_chain(module):
        slots = [name for name, _ in module.named_children()]
        gated = tuple(slot for slot in slots if isinstance(getattr(module, slot), WEIGHTED))
        yield Chain(prefix, module, slots, residual=False, default_gated=gated)
        return
    for name, child in module.named_children():
        yield from _chains(child, f"{prefix}.{name}" if prefix else name)
