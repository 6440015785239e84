"""Images held in memory as one uint8 tensor, transformed per item with torchvision's v2 transforms.

Keeping uint8 instead of normalised floats makes CIFAR's 50,000 training images 150 MB rather than
600 MB, and transforming tensors avoids a PIL round trip per item, which is slow on a small CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


class TransformedTensorDataset(Dataset):
    """``(transform(images[i]), labels[i])`` for uint8 images of shape ``(N, C, H, W)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def image_transform(
    mean: Sequence[float], std: Sequence[float], augment: Sequence[v2.Transform] = ()
) -> v2.Compose:
    """``augment`` (on uint8), then scaling to [0, 1] and per-channel normalisation."""
    return v2.Compose([*augment, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
