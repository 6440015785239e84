"""CIFAR-10 and CIFAR-100 from the python pickle batches torchvision downloads.

The batches are read here rather than through ``torchvision.datasets.CIFAR10`` because that class
unpickles them with the full ``pickle`` module (a file under ``dataset.root`` could run any code)
and converts every image to PIL on access. Here a batch is read only if its MD5 is the official one
(``OFFICIAL_MD5``), and even then by an unpickler that can build nothing but dicts, lists, strings,
numbers and plain numpy arrays; all images are kept in one uint8 tensor and augmented as tensors.
File names and URL come from torchvision, so downloads and layout match it exactly.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.transforms import v2

from consparse.checkpoint_io import numpy_reconstruct
from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.device_batches import ImageTensors
from consparse.data.download import DEFAULT_DOWNLOAD_TIMEOUT, check_digest, download_verified, safe_extract
from consparse.data.info import DatasetInfo
from consparse.data.tensor_images import TransformedTensorDataset, image_transform
from consparse.errors import ParameterError
from consparse.validation import check_range

# Zero padding of the random crop (the standard CIFAR augmentation).
CROP_PADDING = 4

# MD5 of every official file, keyed by its path under dataset.root, as torchvision's CIFAR10 and
# CIFAR100 classes list them (a test checks that the two agree). A file is read only if its MD5 is
# listed here; tests that build small files in the official format register their MD5s in this table.
OFFICIAL_MD5: dict[str, str] = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}


def _plain_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the unpickler, refusing object dtypes (their items would be pickles too)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refused a numpy array of Python objects (dtype {dtype})")
    return dtype


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, limited to Latin-1."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class BatchUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and plain numpy arrays, and nothing else.

    ``pickle`` calls ``find_class`` for every global a pickle names (the only way a pickle gets at
    a callable); admitting just numpy's three array-building names, with object dtypes refused,
    leaves a pickle nothing to run. Python 3 writes bytes into protocol-2 pickles as a call of
    ``_codecs.encode(text, "latin1")``, admitted for that encoding only.
    """

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): numpy_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a CIFAR batch holds only dicts, lists, strings, "
                "numbers and numpy arrays"
            ) from None


def load_batch_pickle(data: bytes) -> Any:
    """Unpickle ``data`` with ``BatchUnpickler`` (Latin-1, since the batches were pickled by Python 2)."""
    return BatchUnpickler(io.BytesIO(data), encoding="latin1").load()


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 from one pickled CIFAR batch.

    Callers check the file's MD5 first; the restricted unpickler is the second line of defence.
    """
    try:
        entry = load_batch_pickle(path.read_bytes())
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), np.ndarray):
            raise TypeError("expected a dict with a numpy array under 'data'")
        labels_listed = entry[label_key]
        if not isinstance(labels_listed, list) or not all(isinstance(v, int) for v in labels_listed):
            raise TypeError(f"expected a list of integers under {label_key!r}")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(labels_listed, dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ParameterError(
            "root", f"{path} is not a CIFAR batch ({type(exc).__name__}: {exc}); delete it and download again"
        ) from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ParameterError(
            "root", f"{path}: data {data.shape} and labels {labels.shape}; expected (N, 3072) and (N,)"
        )
    return data.reshape(-1, 3, 32, 32), labels


class CIFARDataModule(ConsparseDataModule):
    """32x32 colour images, 50,000 for training and 10,000 for test.

    Training images are augmented the standard way (random 32x32 crop of the image padded by 4,
    horizontal flip), then optionally rotated by a random angle (``rotation``), per item in
    DataLoader workers or, with ``on_device``, in batches on the device; ``train_eval``,
    validation and test images are only normalised.

    Args:
        augment: apply the crop-and-flip augmentation to the training split.
        rotation: after crop and flip, rotate each training image by an angle drawn uniformly from
            ``[-rotation, rotation]`` degrees (torchvision's ``RandomRotation``: nearest neighbour,
            zero fill); 0 turns it off. Needs ``augment``.
        download_timeout: seconds a network operation may stall before the download counts as failed.
        **kwargs: the ``ConsparseDataModule`` options (root, batch_size, val_fraction, ...).
    """

    supports_on_device = True
    dataset_name: ClassVar[str]
    num_classes: ClassVar[int]
    torchvision_dataset: ClassVar[type[CIFAR10]]
    # Key of the labels in each pickled batch.
    label_key: ClassVar[str]
    # Per-channel mean and std of the training images scaled to [0, 1].
    mean: ClassVar[tuple[float, float, float]]
    std: ClassVar[tuple[float, float, float]]

    def __init__(
        self,
        augment: bool = True,
        rotation: float = 0.0,
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_range("download_timeout", download_timeout, 0.0, low_inclusive=False)
        check_range("rotation", rotation, 0.0, 180.0)
        if rotation and not augment:
            raise ParameterError(
                "rotation",
                "rotation is part of the training augmentation; set dataset.augment=true or rotation=0",
            )
        self.augment = bool(augment)
        self.rotation = float(rotation)
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

    def check_official(self, path: Path) -> None:
        """Raise a ParameterError naming ``path`` unless its MD5 is the one ``OFFICIAL_MD5`` lists."""
        check_digest(path, OFFICIAL_MD5[path.relative_to(self.root).as_posix()])

    def download_files(self) -> None:
        tv = self.torchvision_dataset
        archive = self.root / tv.filename
        if not archive.exists():
            download_verified([tv.url], self.root, tv.filename, OFFICIAL_MD5[tv.filename], self.download_timeout)
        self.check_official(archive)
        safe_extract(archive, self.root)

    def _load(self, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        for path in files:
            self.check_official(path)
        batches = [read_cifar_batch(path, self.label_key) for path in files]
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ParameterError(
                "root", f"{self.batch_dir}: labels outside [0, {self.num_classes}); wrong dataset?"
            )
        return torch.from_numpy(images), torch.from_numpy(labels)

    def build_splits(self) -> Splits:
        tv = self.torchvision_dataset
        train_images, train_labels = self._load(self._files(tv.train_list))
        test_images, test_labels = self._load(self._files(tv.test_list))
        padding = CROP_PADDING if self.augment else 0
        plain = image_transform(self.mean, self.std)
        steps: list[v2.Transform] = [v2.RandomCrop(32, padding=padding), v2.RandomHorizontalFlip()]
        if self.rotation:
            steps.append(v2.RandomRotation(self.rotation))
        augmented = image_transform(self.mean, self.std, steps) if self.augment else plain
        return Splits(
            train=TransformedTensorDataset(train_images, train_labels, augmented),
            train_eval=TransformedTensorDataset(train_images, train_labels, plain),
            test=TransformedTensorDataset(test_images, test_labels, plain),
            train_tensors=ImageTensors(
                train_images, train_labels, self.mean, self.std, padding, self.augment, self.rotation
            ),
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
