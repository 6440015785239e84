"""Tiny ImageNet (200 classes, 64x64): the cs231n folder layout or its Hugging Face copy.

Folder layout (the unpacked ``tiny-imagenet-200.zip``)::

    <root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 per class
    <root>/tiny-imagenet-200/val/images/*.JPEG              10,000, labels in
    <root>/tiny-imagenet-200/val/val_annotations.txt        "<file>\\t<wnid>\\t<box>"

The official test set has no labels, so the official validation set is the test split here and
validation is carved from train like every other dataset. All 110,000 images are decoded once, by
``num_workers`` processes, into a uint8 tensor (1.3 GB): decoding a JPEG per item every epoch would
cost more than the training. Training images are then augmented per item in the DataLoader's
workers, or in batches on the GPU with ``on_device``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.device_batches import ImageTensors
from consparse.data.download import (
    DEFAULT_DOWNLOAD_TIMEOUT,
    download_verified,
    load_hub_dataset,
    safe_extract,
)
from consparse.data.info import DatasetInfo
from consparse.data.tensor_images import TransformedTensorDataset, image_transform
from consparse.errors import ParameterError
from consparse.validation import check_choice, check_range

if TYPE_CHECKING:  # `datasets` is slow to import and only the Hub sources need it
    from datasets import DatasetDict

NUM_CLASSES = 200
IMAGE_SIZE = 64
CROP_PADDING = 4
# Files one decoding task reads (a worker returns them as one tensor).
DECODE_CHUNK = 512
FOLDER = "tiny-imagenet-200"
ARCHIVE_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
# Split names of the Hugging Face copy (zh-plus/tiny-imagenet): the official train and val sets.
HUB_TRAIN_SPLIT = "train"
HUB_TEST_SPLIT = "valid"
# Per-channel mean and std of the training images scaled to [0, 1].
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2302, 0.2265, 0.2262)


class JpegChunks(Dataset):
    """Item ``k``: the ``k``-th chunk of ``paths`` decoded, and what was wrong with any file of it.

    Problems are returned rather than raised, since an exception raised in a DataLoader worker
    reaches the user wrapped in a traceback.
    """

    def __init__(self, paths: list[Path], chunk: int = DECODE_CHUNK) -> None:
        self.paths = paths
        self.chunk = chunk

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.chunk)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[str]]:
        paths = self.paths[index * self.chunk : (index + 1) * self.chunk]
        images = torch.zeros((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
        problems = []
        for i, path in enumerate(paths):
            try:
                image = decode_image(str(path), mode=ImageReadMode.RGB)
            except RuntimeError as exc:
                problems.append(f"{path} is not a readable image ({exc})")
                continue
            if image.shape != images.shape[1:]:
                problems.append(f"{path} is {tuple(image.shape[1:])} pixels; Tiny ImageNet images are 64x64")
                continue
            images[i] = image
        return images, problems


def _decode(paths: list[Path], num_workers: int = 0) -> torch.Tensor:
    """``(N, 3, 64, 64)`` uint8, decoded by ``num_workers`` processes; grayscale files (a few hundred
    in the set) are expanded to RGB."""
    images = torch.empty((len(paths), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    loader = DataLoader(JpegChunks(paths), batch_size=None, num_workers=num_workers)
    start = 0
    for chunk, problems in loader:
        if problems:
            raise ParameterError("root", f"{problems[0]} ({len(problems)} such files in this chunk)")
        images[start : start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    return images


class TinyImageNetDataModule(ConsparseDataModule):
    """Tiny ImageNet: 100,000 training and 10,000 test (official validation) images.

    Args:
        source: ``folder`` reads the unpacked archive under ``root``; ``huggingface`` loads
            ``hf_dataset_id`` with ``datasets.load_dataset(..., cache_dir=root)``.
        hf_dataset_id: Hugging Face dataset with ``train`` and ``valid`` splits of ``image``/``label``.
        augment: random 64x64 crop of the image padded by 4 and horizontal flip for training.
        download_timeout: seconds a network operation may stall before the download counts as failed.
        **kwargs: the ``ConsparseDataModule`` options (root, batch_size, val_fraction, on_device, ...).
    """

    supports_on_device = True

    def __init__(
        self,
        source: str = "folder",
        hf_dataset_id: str = "zh-plus/tiny-imagenet",
        augment: bool = True,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("source", source, ["folder", "huggingface"])
        check_range("download_timeout", download_timeout, 0.0, low_inclusive=False)
        if not isinstance(hf_dataset_id, str) or not hf_dataset_id:
            raise ParameterError(
                "hf_dataset_id",
                f"got {hf_dataset_id!r}; expected a dataset id such as 'zh-plus/tiny-imagenet'",
            )
        self.source = source
        self.hf_dataset_id = hf_dataset_id
        self.augment = bool(augment)
        self.download_timeout = download_timeout

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("tinyimagenet", (3, IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, "image")

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def required_files(self) -> list[Path]:
        if self.source == "huggingface":
            return []  # the Hub cache has no fixed file list; check_available asks `datasets`
        return [
            self.folder / "train",
            self.folder / "val" / "images",
            self.folder / "val" / "val_annotations.txt",
        ]

    def how_to_get(self) -> str:
        return (
            f"To get them, either run with dataset.download=true on a machine with network ({ARCHIVE_URL} is "
            f"unpacked into {self.root}), or unpack tiny-imagenet-200.zip into {self.root} yourself, or use "
            f"dataset.source=huggingface."
        )

    def download_files(self) -> None:
        archive = self.root / "tiny-imagenet-200.zip"
        if not archive.exists():
            download_verified([ARCHIVE_URL], self.root, archive.name, ARCHIVE_MD5, self.download_timeout)
        safe_extract(archive, self.root)

    def ensure_available(self) -> None:
        if self.source == "huggingface":
            self._load_hub()
        else:
            super().ensure_available()

    def _load_hub(self) -> DatasetDict:
        return load_hub_dataset(
            self.info.name,
            self.hf_dataset_id,
            self.root,
            allow_network=self.download,
            timeout=self.download_timeout,
        )

    # ----------------------------------------------------------------- folder source
    def _class_ids(self) -> list[str]:
        wnids = sorted(path.name for path in (self.folder / "train").iterdir() if path.is_dir())
        if len(wnids) != NUM_CLASSES:
            raise ParameterError(
                "root",
                f"{self.folder / 'train'} has {len(wnids)} class folders; Tiny ImageNet has {NUM_CLASSES}"
            )
        return wnids

    def _folder_train(self, wnids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        paths: list[Path] = []
        labels: list[int] = []
        for label, wnid in enumerate(wnids):
            files = sorted((self.folder / "train" / wnid / "images").glob("*.JPEG"))
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise ParameterError("root", f"no images found under {self.folder / 'train'}/<wnid>/images/*.JPEG")
        return _decode(paths, self.num_workers), torch.tensor(labels, dtype=torch.long)

    def _folder_test(self, wnids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        label_of = {wnid: label for label, wnid in enumerate(wnids)}
        annotations = self.folder / "val" / "val_annotations.txt"
        paths: list[Path] = []
        labels: list[int] = []
        for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise ParameterError(
                    "root",
                    f"{annotations}:{line_number}: expected '<file>\\t<wnid>...' with a training wnid"
                )
            paths.append(self.folder / "val" / "images" / fields[0])
            labels.append(label_of[fields[1]])
        return _decode(paths, self.num_workers), torch.tensor(labels, dtype=torch.long)

    # ----------------------------------------------------------------- Hugging Face source
    def _hub_split(self, dataset: DatasetDict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in dataset:
            raise ParameterError(
                "hf_dataset_id",
                f"Hugging Face dataset '{self.hf_dataset_id}' has splits {sorted(dataset)}; expected '{split}'"
            )
        part = dataset[split]
        labels = np.asarray(part["label"], dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ParameterError(
                "hf_dataset_id",
                f"'{self.hf_dataset_id}' split '{split}' has labels outside [0, {NUM_CLASSES})"
            )
        images = np.empty((len(part), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        for i, example in enumerate(part.select_columns(["image"])):
            pixels = np.asarray(example["image"].convert("RGB"))
            if pixels.shape != images.shape[1:]:
                raise ParameterError(
                    "hf_dataset_id",
                    f"'{self.hf_dataset_id}' split '{split}' item {i} is {pixels.shape[:2]}; expected 64x64"
                )
            images[i] = pixels
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)

    def build_splits(self) -> Splits:
        if self.source == "huggingface":
            dataset = self._load_hub()
            train_images, train_labels = self._hub_split(dataset, HUB_TRAIN_SPLIT)
            test_images, test_labels = self._hub_split(dataset, HUB_TEST_SPLIT)
        else:
            wnids = self._class_ids()
            train_images, train_labels = self._folder_train(wnids)
            test_images, test_labels = self._folder_test(wnids)
        padding = CROP_PADDING if self.augment else 0
        plain = image_transform(MEAN, STD)
        augmented = (
            image_transform(MEAN, STD, [v2.RandomCrop(IMAGE_SIZE, padding=padding), v2.RandomHorizontalFlip()])
            if self.augment
            else plain
        )
        return Splits(
            train=TransformedTensorDataset(train_images, train_labels, augmented),
            train_eval=TransformedTensorDataset(train_images, train_labels, plain),
            test=TransformedTensorDataset(test_images, test_labels, plain),
            train_tensors=ImageTensors(train_images, train_labels, MEAN, STD, padding, self.augment),
        )
