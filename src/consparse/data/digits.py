"""scikit-learn's bundled 8x8 digits: the embedded default that needs no files and no network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.info import DatasetInfo
from consparse.validation import check_int, check_range

# Mean and std of the 8x8 digits after scaling to [0, 1], measured on the whole set.
_MEAN, _STD = 0.3076, 0.3855


class DigitsDataModule(ConsparseDataModule):
    """1,797 handwritten digits (8x8, 10 classes) with a fixed stratified test split.

    Args:
        test_fraction: share of the 1,797 images kept for the test split.
        image_size: side length the images are resized to (8 keeps them as shipped; 28 lets
            lenet5 and MNIST-sized models run on them).
    """

    def __init__(self, test_fraction: float = 0.2, image_size: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        check_range("test_fraction", test_fraction, 0.05, 0.5)
        check_int("image_size", image_size, 8, 256)
        self.test_fraction = test_fraction
        self.image_size = image_size

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("digits", (1, self.image_size, self.image_size), 10, "image")

    def build_splits(self) -> Splits:
        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.image_size != 8:
            images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        images = (images - _MEAN) / _STD
        labels = torch.tensor(bunch.target, dtype=torch.long)
        train_idx, test_idx = train_test_split(
            torch.arange(len(labels)).numpy(), test_size=self.test_fraction, random_state=0, stratify=labels.numpy()
        )
        train = TensorDataset(images[train_idx], labels[train_idx])
        test = TensorDataset(images[test_idx], labels[test_idx])
        return Splits(train=train, train_eval=train, test=test)
