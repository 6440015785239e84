"""Tiny ImageNet from a small fake folder tree (200 classes) and from a fake Hugging Face DatasetDict."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from consparse.data import tinyimagenet
from consparse.data.tinyimagenet import MEAN, STD, TinyImageNetDataModule
from consparse.errors import ConsparseError, DataNotFoundError

PER_CLASS = 2
N_TEST = 30
# Colours survive JPEG compression to within a few levels when the image is flat.
JPEG_TOLERANCE = 4


def wnid(label: int) -> str:
    return f"n{label:08d}"


def colour(label: int, index: int) -> tuple[int, int, int]:
    return (label, 255 - label, 40 + 60 * index)


def write_fake_tree(root: Path, gray_train_image: bool = True) -> dict[str, list]:
    """``tiny-imagenet-200`` with 200 classes of PER_CLASS flat-coloured images and N_TEST val images."""
    base = root / "tiny-imagenet-200"
    for label in range(200):
        folder = base / "train" / wnid(label) / "images"
        folder.mkdir(parents=True)
        (base / "train" / wnid(label) / f"{wnid(label)}_boxes.txt").write_text("")
        for index in range(PER_CLASS):
            Image.new("RGB", (64, 64), colour(label, index)).save(folder / f"{wnid(label)}_{index}.JPEG")
    if gray_train_image:
        Image.new("L", (64, 64), 128).save(base / "train" / wnid(5) / "images" / f"{wnid(5)}_0.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    lines, test_labels = [], []
    for index in range(N_TEST):
        label = (index * 7) % 200
        Image.new("RGB", (64, 64), colour(label, 0)).save(base / "val" / "images" / f"val_{index}.JPEG")
        lines.append(f"val_{index}.JPEG\t{wnid(label)}\t0\t0\t63\t63")
        test_labels.append(label)
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "wnids.txt").write_text("\n".join(wnid(label) for label in range(200)))
    return {"test_labels": test_labels}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tiny")
    return root, write_fake_tree(root)


def pixel(dataset, index: int) -> torch.Tensor:
    """The uint8 RGB value at the image centre of item ``index`` of a TransformedTensorDataset."""
    return dataset.images[index, :, 32, 32].to(torch.int64)


def test_info_needs_no_files(tmp_path):
    for source in ("folder", "huggingface"):
        info = TinyImageNetDataModule(root=tmp_path / "nowhere", source=source).info
        assert (info.name, info.input_shape, info.num_classes, info.kind) == (
            "tinyimagenet",
            (3, 64, 64),
            200,
            "image",
        )


def test_folder_tree_loads_with_official_val_as_test(fake_root):
    root, written = fake_root
    datamodule = TinyImageNetDataModule(root=root, val_fraction=0.1, batch_size=16, download=False)
    datamodule.setup()
    n_train = 200 * PER_CLASS
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (
        n_train - 40,
        40,
        N_TEST,
    )
    train = datamodule.train_eval_set.dataset
    assert train.images.shape == (n_train, 3, 64, 64) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [label for label in range(200) for _ in range(PER_CLASS)]
    for index in (0, 3, 399):
        label, within = divmod(index, PER_CLASS)
        assert (pixel(train, index) - torch.tensor(colour(label, within))).abs().max() <= JPEG_TOLERANCE
    gray = pixel(train, 5 * PER_CLASS)  # the grayscale file is expanded to three equal channels
    assert gray.tolist() == [gray[0].item()] * 3 and abs(gray[0].item() - 128) <= JPEG_TOLERANCE
    test = datamodule.test_set
    assert test.labels.tolist() == written["test_labels"]
    assert (pixel(test, 1) - torch.tensor(colour(7, 0))).abs().max() <= JPEG_TOLERANCE
    image, _ = test[1]
    expected = (torch.tensor(colour(7, 0), dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(
        STD
    )
    assert torch.allclose(image[:, 32, 32], expected, atol=JPEG_TOLERANCE / 255 / min(STD))
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (16, 3, 64, 64) and labels.dtype == torch.long


def test_validation_split_ignores_the_run_seed(fake_root):
    root, _ = fake_root

    def validation_indices(run_seed: int) -> list[int]:
        pl.seed_everything(run_seed)
        datamodule = TinyImageNetDataModule(root=root, download=False, augment=False)
        datamodule.setup()
        return list(datamodule.val_set.indices)

    assert validation_indices(0) == validation_indices(1)


def test_wrong_class_count_is_reported(tmp_path):
    (tmp_path / "tiny-imagenet-200" / "train" / "n0").mkdir(parents=True)
    (tmp_path / "tiny-imagenet-200" / "val" / "images").mkdir(parents=True)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").write_text("")
    with pytest.raises(ConsparseError, match="1 class folders"):
        TinyImageNetDataModule(root=tmp_path, download=False).setup()


def test_missing_folder_names_the_paths(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        TinyImageNetDataModule(root=tmp_path, download=False).setup()
    base = tmp_path / "tiny-imagenet-200"
    for path in (base / "train", base / "val" / "images", base / "val" / "val_annotations.txt"):
        assert str(path) in str(error.value)
    assert "huggingface" in str(error.value)


def test_offline_folder_download_fails_with_the_paths(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("could not download tiny-imagenet-200.zip: Name or service not known")

    monkeypatch.setattr(tinyimagenet, "download_verified", offline)
    with pytest.raises(DataNotFoundError) as error:
        TinyImageNetDataModule(root=tmp_path, download=True).check_available()
    assert "download failed" in str(error.value) and str(tmp_path / "tiny-imagenet-200" / "train") in str(
        error.value
    )


def fake_hub_dataset(n_train: int, n_test: int):
    """A DatasetDict shaped like zh-plus/tiny-imagenet: splits train/valid, features image/label."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=200)})

    def split(n: int, offset: int) -> Dataset:
        labels = [(offset + i) % 200 for i in range(n)]
        images = [Image.new("RGB", (64, 64), colour(label, 0)) for label in labels]
        images[0] = Image.new("L", (64, 64), 77)
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    return DatasetDict({"train": split(n_train, 0), "valid": split(n_test, 50)})


def test_huggingface_source_converts_the_splits(tmp_path, monkeypatch):
    calls = []

    def fake_load(name, dataset_id, cache_dir, *, allow_network, timeout):
        calls.append((dataset_id, cache_dir, allow_network))
        return fake_hub_dataset(20, 6)

    monkeypatch.setattr(tinyimagenet, "load_hub_dataset", fake_load)
    datamodule = TinyImageNetDataModule(
        root=tmp_path, source="huggingface", download=False, val_fraction=0.25
    )
    datamodule.setup()
    assert calls[0] == ("zh-plus/tiny-imagenet", tmp_path, False)
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (15, 5, 6)
    train = datamodule.train_eval_set.dataset
    assert train.images.shape == (20, 3, 64, 64)
    assert train.labels.tolist() == list(range(20))
    assert pixel(train, 0).tolist() == [77, 77, 77]
    assert pixel(train, 3).tolist() == list(colour(3, 0))  # PNG-encoded by datasets: lossless
    assert datamodule.test_set.labels.tolist() == [50 + i for i in range(6)]


def test_huggingface_source_with_other_split_names_is_reported(tmp_path, monkeypatch):
    from datasets import DatasetDict

    dataset = fake_hub_dataset(4, 2)
    renamed = DatasetDict({"train": dataset["train"], "test": dataset["valid"]})
    monkeypatch.setattr(tinyimagenet, "load_hub_dataset", lambda *args, **kwargs: renamed)
    with pytest.raises(ConsparseError, match="expected 'valid'"):
        TinyImageNetDataModule(root=tmp_path, source="huggingface").setup()


def test_huggingface_source_offline_is_a_quick_data_not_found(tmp_path):
    datamodule = TinyImageNetDataModule(root=tmp_path, source="huggingface", download=False)
    with pytest.raises(DataNotFoundError) as error:
        datamodule.check_available()
    assert "zh-plus/tiny-imagenet" in str(error.value)
    assert str(tmp_path / "zh-plus___tiny-imagenet") in str(error.value)
    assert "download is false" in str(error.value) and "dataset.download=true" in str(error.value)


def test_placed_archive_escaping_the_root_is_refused_and_leaves_no_trace(tmp_path):
    import zipfile

    root = tmp_path / "data"
    root.mkdir()
    archive = root / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("tiny-imagenet-200/wnids.txt", "n00000000\n")
        zipped.writestr("../escape.txt", "owned")
    with pytest.raises(ConsparseError) as error:
        TinyImageNetDataModule(root=root, download=True).setup()
    assert str(archive) in str(error.value) and "../escape.txt" in str(error.value)
    assert not (tmp_path / "escape.txt").exists() and not (root / "tiny-imagenet-200").exists()


def test_worker_processes_decode_and_augment(fake_root):
    root, written = fake_root
    datamodule = TinyImageNetDataModule(root=root, download=False, num_workers=2, batch_size=50, val_fraction=0.1)
    datamodule.setup()
    serial = TinyImageNetDataModule(root=root, download=False, num_workers=0, val_fraction=0.1)
    serial.setup()
    assert torch.equal(datamodule.train_eval_set.dataset.images, serial.train_eval_set.dataset.images)
    assert datamodule.test_set.labels.tolist() == written["test_labels"]
    loader = datamodule.train_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.pin_memory) == (2, True, torch.cuda.is_available())
    assert sum(len(labels) for _, labels in loader) == 360


def test_unreadable_image_is_one_error_naming_it(tmp_path):
    write_fake_tree(tmp_path)
    broken = tmp_path / "tiny-imagenet-200" / "train" / wnid(3) / "images" / f"{wnid(3)}_1.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ConsparseError) as error:
        TinyImageNetDataModule(root=tmp_path, download=False, num_workers=1).setup()
    assert str(broken) in str(error.value) and "Traceback" not in str(error.value)


def test_on_device_batches_are_views_of_the_training_images(fake_root):
    root, _ = fake_root
    datamodule = TinyImageNetDataModule(root=root, download=False, on_device=True, batch_size=16)
    batches = datamodule.train_dataloader()
    x, y = next(iter(batches))
    assert x.shape == (16, 3, 64, 64) and y.dtype == torch.long
    assert batches.sampler.padding == 4 and batches.sampler.flip
