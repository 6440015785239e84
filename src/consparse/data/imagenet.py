"""ImageNet (ILSVRC2012) in the ImageFolder layout: ``<root>/train/<wnid>/*.JPEG``, ``<root>/val/<wnid>/*.JPEG``.

1.28 million images do not fit in memory as tensors, so images are decoded per item by
torchvision's ImageFolder with the standard transforms; use ``num_workers`` to keep up.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.info import DatasetInfo
from consparse.errors import ParameterError
from consparse.validation import check_int

# Per-channel mean and std of the ImageNet training images scaled to [0, 1].
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ImageNetDataModule(ConsparseDataModule):
    """ImageNet classification; the labelled validation set is the test split.

    Training images get RandomResizedCrop(image_size) and a horizontal flip; evaluation images are
    resized to ``resize_size`` and centre-cropped to ``image_size`` (224 of 256 by default).

    Args:
        num_classes: number of class folders expected under ``train`` and ``val`` (1000 for
            ILSVRC2012; a subset with fewer folders must say how many, since models are built
            before any file is read).
        image_size: side of the square crop the model sees.
        resize_size: shorter side the evaluation images are resized to before the centre crop.
        augment: use the random crop and flip for training (otherwise the evaluation transform).
        **kwargs: the ``ConsparseDataModule`` options (root, batch_size, val_fraction, ...).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        image_size: int = 224,
        resize_size: int = 256,
        augment: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_int("num_classes", num_classes, 2)
        check_int("image_size", image_size, 8, 1024)
        check_int("resize_size", resize_size, image_size, 2048)
        self.num_classes = num_classes
        self.image_size = image_size
        self.resize_size = resize_size
        self.augment = bool(augment)

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("imagenet", (3, self.image_size, self.image_size), self.num_classes, "image")

    def required_files(self) -> list[Path]:
        return [self.root / "train", self.root / "val"]

    def how_to_get(self) -> str:
        return (
            "ImageNet cannot be downloaded automatically: it needs an account at image-net.org. Unpack "
            f"ILSVRC2012_img_train.tar into {self.root / 'train'}/<wnid>/ and sort the validation images of "
            f"ILSVRC2012_img_val.tar into {self.root / 'val'}/<wnid>/ (torchvision.datasets.ImageNet "
            "or the usual valprep.sh script does that)."
        )

    def _folder(self, split: str, transform: v2.Transform) -> ImageFolder:
        dataset = ImageFolder(str(self.root / split), transform=transform)
        if len(dataset.classes) != self.num_classes:
            raise ParameterError(
                "num_classes",
                f"is {self.num_classes}, but {self.root / split} has {len(dataset.classes)} class folders; "
                f"set dataset.num_classes={len(dataset.classes)} or fix the folder",
            )
        return dataset

    def build_splits(self) -> Splits:
        to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))]
        evaluation = v2.Compose([v2.Resize(self.resize_size), v2.CenterCrop(self.image_size), *to_tensor])
        training = (
            v2.Compose([v2.RandomResizedCrop(self.image_size), v2.RandomHorizontalFlip(), *to_tensor])
            if self.augment
            else evaluation
        )
        train = self._folder("train", training)
        test = self._folder("val", evaluation)
        if test.classes != train.classes:
            differing = sorted(set(train.classes) ^ set(test.classes))[:5]
            raise ParameterError(
                "root",
                f"{self.root / 'train'} and {self.root / 'val'} have different class folders (e.g. {differing})",
            )
        # Scanning 1.28M files takes minutes, so the un-augmented view shares the scan.
        train_eval = copy.copy(train)
        train_eval.transform = evaluation
        return Splits(train=train, train_eval=train_eval, test=test)
