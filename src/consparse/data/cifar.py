"""CIFAR-10 and CIFAR-100 from the python pickle batches torchvision downloads.

The batches are read here rather than through ``torchvision.datasets.CIFAR10`` because that class
checks each file's MD5 and converts every image to PIL on access; reading the pickles directly
keeps all images in one uint8 tensor and augments tensors. File names, URL and checksums still
come from torchvision, so downloads and layout match it exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import extract_archive
from torchvision.transforms import v2

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.download import DEFAULT_DOWNLOAD_TIMEOUT, download_verified
from consparse.data.info import DatasetInfo
from consparse.data.tensor_images import TransformedTensorDataset, image_transform
from consparse.errors import ConsparseError
from consparse.validation import check_range


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 from one pickled CIFAR batch.

    The batches were pickled by Python 2, hence the Latin-1 decoding of their byte strings.
    """
    try:
        with open(path, "rb") as stream:
            entry = pickle.load(stream, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        raise ConsparseError(
            f"{path} is not a CIFAR batch ({type(exc).__name__}: {exc}); delete it and download again"
        ) from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ConsparseError(
            f"{path}: data {data.shape} and labels {labels.shape}; expected (N, 3072) and (N,)"
        )
    return data.reshape(-1, 3, 32, 32), labels


class CIFARDataModule(ConsparseDataModule):
    """32x32 colour images, 50,000 for training and 10,000 for test.

    Training images are augmented the standard way (random 32x32 crop of the image padded by 4,
    horizontal flip); ``train_eval``, validation and test images are only normalised.

    Args:
        augment: apply the crop-and-flip augmentation to the training split.
        download_timeout: seconds a network operation may stall before the download counts as failed.
        **kwargs: the ``ConsparseDataModule`` options (root, batch_size, val_fraction, ...).
    """

    dataset_name: ClassVar[str]
    num_classes: ClassVar[int]
    torchvision_dataset: ClassVar[type[CIFAR10]]
    # Key of the labels in each pickled batch.
    label_key: ClassVar[str]
    # Per-channel mean and std of the training images scaled to [0, 1].
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]

    def __init__(
        self, augment: bool = True, download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        check_range("dataset.download_timeout", download_timeout, 0.0, low_inclusive=False)
        self.augment = bool(augment)
        self.download_timeout = download_timeout

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.dataset_name, (3, 32, 32), self.num_classes, "image")

    @property
    def batch_dir(self) -> Path:
        return self.root / self.torchvision_dataset.base_folder

    def _files(self, listing: list[list[str]]) -> list[Path]:
        return [self.batch_dir / name for name, _md5 in listing]

    def required_files(self) -> list[Path]:
        tv = self.torchvision_dataset
        return self._files(tv.train_list) + self._files(tv.test_list)

    def how_to_get(self) -> str:
        tv = self.torchvision_dataset
        return (
            f"To get them, either run with dataset.download=true on a machine with network (torchvision's "
            f"archive {tv.url} is unpacked into {self.root}), or unpack {tv.filename} yourself so that "
            f"{self.batch_dir} holds the python batches."
        )

    def download_files(self) -> None:
        tv = self.torchvision_dataset
        archive = self.root / tv.filename
        if not archive.exists():
            download_verified([tv.url], self.root, tv.filename, tv.tgz_md5, self.download_timeout)
        extract_archive(str(archive), str(self.root))

    def _load(self, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [read_cifar_batch(path, self.label_key) for path in files]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ConsparseError(f"{self.batch_dir}: labels outside [0, {self.num_classes}); wrong dataset?")
        return torch.from_numpy(images), torch.from_numpy(labels)

    def build_splits(self) -> Splits:
        tv = self.torchvision_dataset
        train_images, train_labels = self._load(self._files(tv.train_list))
        test_images, test_labels = self._load(self._files(tv.test_list))
        plain = image_transform(self.mean, self.std)
        augmented = (
            image_transform(self.mean, self.std, [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
            if self.augment
            else plain
        )
        return Splits(
            train=TransformedTensorDataset(train_images, train_labels, augmented),
            train_eval=TransformedTensorDataset(train_images, train_labels, plain),
            test=TransformedTensorDataset(test_images, test_labels, plain),
        )


class CIFAR10DataModule(CIFARDataModule):
    """10 classes; batches under ``<root>/cifar-10-batches-py``."""

    dataset_name = "cifar10"
    num_classes = 10
    torchvision_dataset = CIFAR10
    label_key = "labels"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(CIFARDataModule):
    """100 fine-grained classes; files under ``<root>/cifar-100-python``."""

    dataset_name = "cifar100"
    num_classes = 100
    torchvision_dataset = CIFAR100
    label_key = "fine_labels"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
