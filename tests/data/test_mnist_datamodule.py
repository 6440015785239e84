"""MNIST / Fashion-MNIST loading from idx .gz files written into tmp_path in the real format."""

from __future__ import annotations

import gzip
import socket
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from consparse.data.mnist import (
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    FashionMNISTDataModule,
    MNISTDataModule,
    read_idx_gz,
)
from consparse.errors import ConsparseError, DataNotFoundError

N_TRAIN, N_TEST = 50, 20
MODULES = [MNISTDataModule, FashionMNISTDataModule]


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """The idx format: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def write_fake_split_files(raw_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (N_TRAIN, 28, 28)),
        TRAIN_LABELS: np.arange(N_TRAIN) % 10,
        TEST_IMAGES: rng.integers(0, 256, (N_TEST, 28, 28)),
        TEST_LABELS: (np.arange(N_TEST) * 3) % 10,
    }
    for name, array in arrays.items():
        write_idx_gz(raw_dir / name, array)
    return arrays


@pytest.fixture(params=MODULES, ids=lambda cls: cls.dataset_name)
def module_cls(request):
    return request.param


def test_read_idx_gz_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx_gz(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx_gz(tmp_path / "x.gz"), array)


def test_truncated_or_foreign_files_are_reported(tmp_path):
    write_idx_gz(tmp_path / "x.gz", np.zeros((4, 5), dtype=np.uint8))
    data = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(data[:-3]))
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    (tmp_path / "float.gz").write_bytes(gzip.compress(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4))
    with pytest.raises(ConsparseError, match="truncated"):
        read_idx_gz(tmp_path / "short.gz")
    with pytest.raises(ConsparseError, match="gzip"):
        read_idx_gz(tmp_path / "plain.gz")
    with pytest.raises(ConsparseError, match="unsigned-byte"):
        read_idx_gz(tmp_path / "float.gz")


def test_info_needs_no_files(module_cls, tmp_path):
    info = module_cls(root=tmp_path / "nowhere").info
    assert (info.input_shape, info.num_classes, info.kind) == ((1, 28, 28), 10, "image")


def test_loads_normalised_tensors_and_splits(module_cls, tmp_path):
    arrays = write_fake_split_files(tmp_path / module_cls.folder / "raw")
    datamodule = module_cls(root=tmp_path, val_fraction=0.2, batch_size=8, download=False)
    datamodule.setup()
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (40, 10, N_TEST)
    images, labels = datamodule.train_set.dataset.tensors
    assert images.shape == (N_TRAIN, 1, 28, 28) and images.dtype == torch.float32
    expected = (arrays[TRAIN_IMAGES] / 255.0 - module_cls.mean) / module_cls.std
    np.testing.assert_allclose(images[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), arrays[TRAIN_LABELS])
    _, test_labels = datamodule.test_set.tensors
    np.testing.assert_array_equal(test_labels.numpy(), arrays[TEST_LABELS])
    batch_images, batch_labels = next(iter(datamodule.train_dataloader()))
    assert batch_images.shape == (8, 1, 28, 28) and batch_labels.dtype == torch.long


def test_validation_split_ignores_the_run_seed(module_cls, tmp_path):
    write_fake_split_files(tmp_path / module_cls.folder / "raw")

    def validation_indices(run_seed: int, split_seed: int = 0) -> list[int]:
        pl.seed_everything(run_seed)
        datamodule = module_cls(root=tmp_path, val_fraction=0.2, split_seed=split_seed, download=False)
        datamodule.setup()
        return list(datamodule.val_set.indices)

    assert validation_indices(1) == validation_indices(2)
    assert validation_indices(1) != validation_indices(1, split_seed=1)


def test_missing_files_without_download_name_the_four_paths(module_cls, tmp_path):
    datamodule = module_cls(root=tmp_path, download=False)
    with pytest.raises(DataNotFoundError) as error:
        datamodule.setup()
    message = str(error.value)
    for name in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS):
        assert str(tmp_path / module_cls.folder / "raw" / name) in message
    assert "download is false" in message and "copy" in message


def test_failed_download_is_quick_bounded_and_leaves_no_partial_file(module_cls, tmp_path, monkeypatch):
    attempts = []

    def offline_download(url, root, filename, md5):
        attempts.append((url, socket.getdefaulttimeout()))
        Path(root, filename).write_bytes(b"half a file")  # what an interrupted transfer leaves
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline_download)
    previous_timeout = socket.getdefaulttimeout()
    datamodule = module_cls(root=tmp_path, download=True, download_timeout=3.5)
    with pytest.raises(DataNotFoundError) as error:
        datamodule.check_available()
    assert "download failed" in str(error.value) and TRAIN_IMAGES in str(error.value)
    assert attempts and all(timeout == 3.5 for _, timeout in attempts)
    assert {url for url, _ in attempts} >= {
        f"{m}{TRAIN_IMAGES}" for m in module_cls.torchvision_dataset.mirrors
    }
    assert socket.getdefaulttimeout() == previous_timeout
    raw_dir = tmp_path / module_cls.folder / "raw"
    assert list(raw_dir.iterdir()) == [], "a failed download must not leave files that pass for data"


def test_successful_download_puts_files_in_place(module_cls, tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    arrays = write_fake_split_files(source)

    def fake_download(url, root, filename, md5):
        Path(root, filename).write_bytes((source / filename).read_bytes())

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    datamodule = module_cls(root=tmp_path / "root", download=True)
    datamodule.setup()
    assert len(datamodule.test_set) == N_TEST
    np.testing.assert_array_equal(datamodule.test_set.tensors[1].numpy(), arrays[TEST_LABELS])


def test_files_are_read_in_place_without_writing_beside_them(module_cls, tmp_path):
    raw_dir = tmp_path / module_cls.folder / "raw"
    write_fake_split_files(raw_dir)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    datamodule = module_cls(root=tmp_path, download=True)
    datamodule.setup()
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == before
