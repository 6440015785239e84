"""ImageNet's ImageFolder loading on a tiny fake tree (3 classes, small JPEGs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from consparse.data.imagenet import MEAN, STD, ImageNetDataModule
from consparse.errors import DataNotFoundError, ParameterError

CLASSES = ["n01440764", "n01443537", "n01484850"]
TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 2


def write_fake_imagenet(root: Path, classes=CLASSES) -> None:
    for label, wnid in enumerate(classes):
        for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for index in range(count):
                # Non-square, so that resizing and cropping have work to do.
                Image.new("RGB", (40, 30), (60 * label, 100, 20 * index)).save(
                    folder / f"{wnid}_{index}.JPEG"
                )


def small(root: Path, **options) -> ImageNetDataModule:
    defaults = {"num_classes": 3, "image_size": 16, "resize_size": 20, "num_workers": 0, "download": False}
    return ImageNetDataModule(root=root, **{**defaults, **options})


def test_info_needs_no_files(tmp_path):
    info = ImageNetDataModule(root=tmp_path / "nowhere").info
    assert (info.name, info.input_shape, info.num_classes, info.kind) == (
        "imagenet",
        (3, 224, 224),
        1000,
        "image",
    )
    assert small(tmp_path).info.input_shape == (3, 16, 16)


def test_tree_loads_with_standard_transforms(tmp_path):
    write_fake_imagenet(tmp_path)
    datamodule = small(tmp_path, val_fraction=0.25, batch_size=3)
    datamodule.setup()
    n_train = 3 * TRAIN_PER_CLASS
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (
        9,
        3,
        3 * VAL_PER_CLASS,
    )
    image, label = datamodule.test_set[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 0
    # Flat colour (0, 100, 0): after Resize + CenterCrop every pixel is that colour, normalised.
    expected = (torch.tensor([0.0, 100.0, 0.0]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(image.mean(dim=(1, 2)), expected, atol=0.05)
    assert [datamodule.test_set[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert len(datamodule.train_eval_set.dataset) == n_train
    assert datamodule.train_eval_set.dataset.samples is datamodule.train_set.dataset.samples
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (3, 3, 16, 16) and labels.dtype == torch.long


def test_validation_split_ignores_the_run_seed(tmp_path):
    write_fake_imagenet(tmp_path)

    def validation_indices(run_seed: int) -> list[int]:
        pl.seed_everything(run_seed)
        datamodule = small(tmp_path, val_fraction=0.25)
        datamodule.setup()
        return list(datamodule.val_set.indices)

    assert validation_indices(5) == validation_indices(6)


def test_class_count_mismatch_is_a_config_error(tmp_path):
    write_fake_imagenet(tmp_path)
    with pytest.raises(ParameterError) as error:
        small(tmp_path, num_classes=1000).setup()
    assert error.value.name == "num_classes"
    assert "3 class folders" in str(error.value) and "dataset.num_classes=3" in str(error.value)


def test_train_and_val_with_different_classes_are_reported(tmp_path):
    write_fake_imagenet(tmp_path)
    (tmp_path / "val" / CLASSES[2]).rename(tmp_path / "val" / "n09999999")
    with pytest.raises(ParameterError, match="different class folders"):
        small(tmp_path).setup()


def test_missing_tree_names_the_paths_and_how_to_get_it(tmp_path):
    for download in (False, True):
        with pytest.raises(DataNotFoundError) as error:
            small(tmp_path, download=download).setup()
        message = str(error.value)
        assert str(tmp_path / "train") in message and str(tmp_path / "val") in message
        assert "image-net.org" in message


def test_workers_decode_and_augment_with_pinned_persistent_loaders(tmp_path):
    write_fake_imagenet(tmp_path)
    datamodule = small(tmp_path, num_workers=2, batch_size=4, val_fraction=0.25)
    loader = datamodule.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.pin_memory) == (2, True, torch.cuda.is_available())
    batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 9
    assert all(images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32 for images, _ in batches)
    # Workers survive the epoch (persistent) and serve the next one.
    assert sum(len(labels) for _, labels in loader) == 9
    assert datamodule.test_dataloader().num_workers == 2
