"""MNIST and Fashion-MNIST, read from torchvision's ``<root>/<Folder>/raw/*.gz`` layout.

Both ship as the same four gzip-compressed idx files, so one module serves both. The files are
read in place (the shared copy is read-only, and torchvision's own loader insists on extracting
them next to the archives); torchvision is used only to download them when they are missing.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision.datasets import MNIST, FashionMNIST

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.device_batches import ImageTensors
from consparse.data.download import DEFAULT_DOWNLOAD_TIMEOUT, download_verified
from consparse.data.info import DatasetInfo
from consparse.errors import ParameterError
from consparse.validation import check_range

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

# idx header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
_IDX_UBYTE = 0x08


def read_idx_gz(path: Path) -> np.ndarray:
    """The uint8 array stored in a gzip-compressed idx file (``*-idx3-ubyte.gz``, ``*-idx1-ubyte.gz``).

    Written here because torchvision's ``read_sn3_pascalvincent_tensor`` opens an uncompressed file
    by path, which would need the archive extracted to disk first.
    """
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ParameterError(
            "root",
            f"{path} is not a readable gzip file ({exc}); delete it and download it again"
        ) from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise ParameterError("root", f"{path} is not an unsigned-byte idx file; delete it and download it again")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    values = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    if values.size != int(np.prod(dims)):
        raise ParameterError(
            "root",
            f"{path}: header says {dims} but holds {values.size} values; the file is truncated"
        )
    return values.reshape(dims)


class IdxImageDataModule(ConsparseDataModule):
    """28x28 grayscale, 10 classes, 60,000 training and 10,000 test images in four idx files.

    A split is loaded whole into one normalised float tensor ``(N, 1, 28, 28)``: per-item PIL
    transforms cost more than the small models trained on these sets. With ``on_device`` the
    training images stay uint8 on the device and are normalised there per batch.

    Args:
        download_timeout: seconds a network operation may stall before the download counts as failed.
        **kwargs: the ``ConsparseDataModule`` options (root, batch_size, val_fraction, ...).
    """

    supports_on_device = True
    folder: ClassVar[str]
    dataset_name: ClassVar[str]
    # Per-pixel mean and std of the training images scaled to [0, 1].
    mean: ClassVar[float]
    std: ClassVar[float]
    # The torchvision dataset whose mirrors and MD5 checksums are used for downloading.
    torchvision_dataset: ClassVar[type[MNIST]]

    def __init__(self, download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT, **kwargs) -> None:
        super().__init__(**kwargs)
        check_range("download_timeout", download_timeout, 0.0, low_inclusive=False)
        self.download_timeout = download_timeout

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.dataset_name, (1, 28, 28), 10, "image")

    @property
    def raw_dir(self) -> Path:
        return self.root / self.folder / "raw"

    def required_files(self) -> list[Path]:
        return [self.raw_dir / name for name in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)]

    def how_to_get(self) -> str:
        return (
            f"To get them, either run with dataset.download=true on a machine with network (torchvision "
            f"downloads the four files into {self.raw_dir}), or copy the four files "
            f"({TRAIN_IMAGES}, {TRAIN_LABELS}, {TEST_IMAGES}, {TEST_LABELS}) into {self.raw_dir}."
        )

    def download_files(self) -> None:
        tv = self.torchvision_dataset
        for filename, md5 in tv.resources:
            if not (self.raw_dir / filename).exists():
                urls = [f"{mirror}{filename}" for mirror in tv.mirrors]
                download_verified(urls, self.raw_dir, filename, md5, self.download_timeout)

    def _load_split(self, images_file: str, labels_file: str) -> ImageTensors:
        images = read_idx_gz(self.raw_dir / images_file)
        labels = read_idx_gz(self.raw_dir / labels_file)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
            raise ParameterError(
                "root",
                f"{self.raw_dir}: {images_file} has shape {images.shape} and {labels_file} {labels.shape}; "
                "expected (N, 28, 28) images and N labels"
            )
        return ImageTensors(
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
            (self.mean,),
            (self.std,),
        )

    def _normalised(self, split: ImageTensors) -> TensorDataset:
        pixels = split.images.float().div_(255.0)
        pixels.sub_(self.mean).div_(self.std)
        return TensorDataset(pixels, split.labels)

    def build_splits(self) -> Splits:
        train = self._load_split(TRAIN_IMAGES, TRAIN_LABELS)
        train_set = self._normalised(train)
        test_set = self._normalised(self._load_split(TEST_IMAGES, TEST_LABELS))
        return Splits(train=train_set, train_eval=train_set, test=test_set, train_tensors=train)


class MNISTDataModule(IdxImageDataModule):
    """Handwritten digits (LeCun et al.); files under ``<root>/MNIST/raw``."""

    folder = "MNIST"
    dataset_name = "mnist"
    mean = 0.1307
    std = 0.3081
    torchvision_dataset = MNIST


class FashionMNISTDataModule(IdxImageDataModule):
    """Zalando's clothing images; files under ``<root>/FashionMNIST/raw``."""

    folder = "FashionMNIST"
    dataset_name = "fashion_mnist"
    mean = 0.2860
    std = 0.3530
    torchvision_dataset = FashionMNIST
