"""Training batches cut from a uint8 image tensor kept on the accelerator, augmented there.

The per-item CPU path (``TransformedTensorDataset`` in a DataLoader) crops and flips one image at a
time in Python; a GPU consumes CIFAR images far faster than that. Here the whole training split
lives on the device as uint8 (CIFAR: 150 MB) and each batch is gathered, cropped, flipped and
normalised by a few batched tensor operations, with the same distribution as torchvision's
``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``: each crop offset uniform over the
``2 * padding + 1`` positions per axis, independently, and a flip with probability 1/2; with
``rotation``, then ``RandomRotation(rotation)`` (nearest neighbour, zero fill), its angle uniform
in ``[-rotation, rotation]`` degrees.

Order and augmentation follow ``DistributedSampler``'s conventions: one permutation per epoch from
a generator seeded with ``seed + epoch``, padded by repetition to a multiple of the number of
processes, rank ``r`` taking positions ``r, r + world, ...``. Crop offsets and flips are drawn for
the global positions, so a sample's augmentation does not depend on the number of processes, and
the ranks' batches together are the single-process batch. Everything is drawn on the CPU (a few
hundred kilobytes per epoch), so the batches are the same on every device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageTensors:
    """A training split as uint8 images and the augmentation its CPU path applies.

    ``padding`` is the zero padding of ``RandomCrop(H, padding)`` (0: no crop); ``flip`` says
    whether ``RandomHorizontalFlip`` follows it, ``rotation`` the degrees of the ``RandomRotation``
    after both (0: none). ``mean``/``std`` normalise after scaling to [0, 1].
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    padding: int = 0
    flip: bool = False
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")


@dataclass(frozen=True)
class EpochPlan:
    """One rank's share of an epoch: sample indices, crop offsets (top, left), flips and rotation
    angles (degrees), in order."""

    indices: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor
    angle: torch.Tensor


class EpochSampler:
    """Draws each epoch's order and augmentation; Lightning calls ``set_epoch`` before each epoch.

    Args:
        num_samples: size of the training split.
        seed: seeds the generator together with the epoch (``seed + epoch``).
        rank, world_size: this process and the number of processes sharing the epoch.
        shuffle: permute the samples (otherwise in index order).
        padding: crop offsets are drawn uniformly from ``0 .. 2 * padding`` per axis.
        flip: draw a horizontal flip with probability 1/2.
        rotation: draw a rotation angle uniformly from ``[-rotation, rotation]`` degrees (0: none).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        padding: int = 0,
        flip: bool = False,
        rotation: float = 0.0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.padding = padding
        self.flip = flip
        self.rotation = rotation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def plan(self) -> EpochPlan:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        # Drawn for the n positions of the order (not the padded total), so that the draws do not
        # depend on the number of processes; the padding repeats positions with their draws.
        top = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * self.padding + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        # Drawn last, so that order, crops and flips are those of a run without rotation.
        angle = (
            (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * self.rotation
            if self.rotation
            else torch.zeros(n, dtype=torch.float64)
        )
        total = len(self) * self.world_size
        repeats = math.ceil(total / n)
        share = slice(self.rank, total, self.world_size)
        return EpochPlan(*(part.repeat(repeats)[:total][share] for part in (order, top, left, flip, angle)))


def crop_and_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Batched ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip`` with the given offsets and flips.

    Image ``i`` becomes the ``H x W`` window at ``(top[i], left[i])`` of itself zero-padded by
    ``padding``, mirrored when ``flip[i]``: the output torchvision gives for those draws.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    device = images.device
    rows = top.view(-1, 1) + torch.arange(height, device=device)
    columns = left.view(-1, 1) + torch.arange(width, device=device)
    columns = torch.where(flip.view(-1, 1), columns.flip(1), columns)
    return padded[
        torch.arange(batch, device=device).view(-1, 1, 1, 1),
        torch.arange(channels, device=device).view(1, -1, 1, 1),
        rows.view(batch, 1, height, 1),
        columns.view(batch, 1, 1, width),
    ]


def rotate(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Batched ``RandomRotation`` with the given angles: image ``i`` turned ``angle[i]`` degrees
    counter-clockwise about its centre, nearest neighbour, zero where it samples outside.

    The sampling grid is torchvision's (``rotate`` on tensors: inverse rotation of the pixel
    centres, ``grid_sample`` with ``align_corners=False``), built for the whole batch at once.
    """
    batch, _, height, width = images.shape
    radians = torch.deg2rad(angle.to(device=images.device, dtype=torch.float64))
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # Output pixel centre -> input pixel centre, in grid_sample's [-1, 1] coordinates per axis.
    rows = [torch.stack([cos, -sin * height / width, zero], 1), torch.stack([sin * width / height, cos, zero], 1)]
    theta = torch.stack(rows, 1)
    grid = F.affine_grid(theta.float(), [batch, 1, height, width], align_corners=False)
    turned = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return turned.round_().to(images.dtype)


class DeviceBatches:
    """``(x, y)`` training batches made on ``device`` from ``ImageTensors`` moved there once.

    Iterable like a DataLoader (Lightning accepts it as the training loader); ``sampler`` is the
    ``EpochSampler`` Lightning calls ``set_epoch`` on. ``x`` is float32 ``(B, C, H, W)``, normalised,
    ``y`` int64; the last batch may be smaller.

    Args:
        tensors: the training split (already restricted to the training indices).
        batch_size: batch per process.
        device: where the images are kept and the batches are made.
        sampler: order and augmentation (its ``padding`` and ``flip``) per epoch, this process's share.
    """

    def __init__(
        self, tensors: ImageTensors, batch_size: int, device: torch.device | str, sampler: EpochSampler
    ) -> None:
        if sampler.num_samples != tensors.images.shape[0]:
            raise ValueError(f"sampler covers {sampler.num_samples} samples, the tensors {tensors.images.shape[0]}")
        self.device = torch.device(device)
        self.images = tensors.images.to(self.device)
        self.labels = tensors.labels.to(self.device)
        # Made once: a per-batch tensor from a Python list would be a host-to-device copy per batch.
        self.mean = torch.tensor(tensors.mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self.std = torch.tensor(tensors.std, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self.batch_size = batch_size
        self.sampler = sampler

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.sampler.plan()
        indices, top, left, flip, angle = (
            part.to(self.device, non_blocking=True)
            for part in (plan.indices, plan.top, plan.left, plan.flip, plan.angle)
        )
        for start in range(0, indices.numel(), self.batch_size):
            chosen = indices[start : start + self.batch_size]
            images = self.images[chosen]
            if self.sampler.padding or self.sampler.flip:
                part = slice(start, start + self.batch_size)
                images = crop_and_flip(images, top[part], left[part], flip[part], self.sampler.padding)
            if self.sampler.rotation:
                images = rotate(images, angle[start : start + self.batch_size])
            # torchvision's ToDtype(float32, scale=True) and Normalize, operation for operation, so
            # that the values are bit-identical to the per-item path's.
            x = images.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)
            yield x, self.labels[chosen]
