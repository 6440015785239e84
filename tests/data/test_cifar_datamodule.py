"""CIFAR-10/100 loading from tiny batch files written into tmp_path in the real pickle format.

The small files cannot have the official MD5s, so each test that reads them registers their MD5s
in ``consparse.data.cifar.OFFICIAL_MD5`` through the ``official`` fixture, the one way the check
is relaxed.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from consparse.data import cifar
from consparse.data.cifar import CIFAR10DataModule, CIFAR100DataModule, read_cifar_batch
from consparse.data.download import file_digest
from consparse.errors import ConsparseError, DataNotFoundError, ParameterError

REPO = Path(__file__).resolve().parents[2]
PER_BATCH = 6  # images per fake batch file
MODULES = [CIFAR10DataModule, CIFAR100DataModule]


def write_batch(
    path: Path, n: int, label_key: str, num_classes: int, seed: int
) -> tuple[np.ndarray, list[int]]:
    """One batch as CIFAR ships it: a Python-2 style pickle of ``data`` (N, 3072) uint8 and labels."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    entry = {
        "batch_label": "fake batch",
        label_key: labels,
        "data": data,
        "filenames": [f"{i}.png" for i in range(n)],
    }
    if label_key == "fine_labels":
        entry["coarse_labels"] = [label // 5 for label in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as stream:
        pickle.dump(entry, stream, protocol=2)
    return data, labels


def write_fake_cifar(root: Path, module_cls, official=None) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Every batch of ``module_cls`` under ``root``; ``official(root, path)`` registers each file's MD5."""
    tv = module_cls.torchvision_dataset
    written = {}
    for index, (name, _md5) in enumerate(tv.train_list + tv.test_list):
        path = root / tv.base_folder / name
        written[name] = write_batch(path, PER_BATCH, module_cls.label_key, module_cls.num_classes, seed=index)
        if official is not None:
            official(root, path)
    return written


@pytest.fixture
def official(monkeypatch):
    """``official(root, path)``: accept ``path`` (relative to ``root``) as an official CIFAR file."""

    def register(root: Path, path: Path) -> None:
        monkeypatch.setitem(cifar.OFFICIAL_MD5, path.relative_to(root).as_posix(), file_digest(path))

    return register


@pytest.fixture(params=MODULES, ids=lambda cls: cls.dataset_name)
def module_cls(request):
    return request.param


def test_info_needs_no_files(module_cls, tmp_path):
    info = module_cls(root=tmp_path / "nowhere").info
    expected_classes = 10 if module_cls is CIFAR10DataModule else 100
    assert (info.name, info.input_shape, info.num_classes, info.kind) == (
        module_cls.dataset_name,
        (3, 32, 32),
        expected_classes,
        "image",
    )


def test_expected_files_follow_torchvision(tmp_path):
    assert CIFAR10DataModule(root=tmp_path).required_files() == [
        tmp_path / "cifar-10-batches-py" / name
        for name in (
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
        )
    ]
    assert CIFAR100DataModule(root=tmp_path).required_files() == [
        tmp_path / "cifar-100-python" / "train",
        tmp_path / "cifar-100-python" / "test",
    ]


def test_reads_batches_in_order_with_splits(module_cls, tmp_path, official):
    written = write_fake_cifar(tmp_path, module_cls, official)
    tv = module_cls.torchvision_dataset
    n_train = PER_BATCH * len(tv.train_list)
    datamodule = module_cls(root=tmp_path, val_fraction=0.25, batch_size=4, download=False)
    datamodule.setup()
    n_val = round(0.25 * n_train)
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (
        n_train - n_val,
        n_val,
        PER_BATCH,
    )
    train_eval = datamodule.train_eval_set.dataset
    expected_images = np.concatenate([written[name][0] for name, _ in tv.train_list]).reshape(-1, 3, 32, 32)
    expected_labels = [label for name, _ in tv.train_list for label in written[name][1]]
    assert torch.equal(train_eval.images, torch.from_numpy(expected_images))
    assert train_eval.labels.tolist() == expected_labels
    image, label = train_eval[0]
    mean = torch.tensor(module_cls.mean).view(3, 1, 1)
    std = torch.tensor(module_cls.std).view(3, 1, 1)
    expected = (torch.from_numpy(expected_images[0]).float() / 255 - mean) / std
    assert torch.allclose(image, expected, atol=1e-5) and label.item() == expected_labels[0]
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.long


def test_training_images_are_augmented_and_evaluation_images_are_not(tmp_path, official):
    write_fake_cifar(tmp_path, CIFAR10DataModule, official)
    datamodule = CIFAR10DataModule(root=tmp_path, download=False)
    datamodule.setup()
    train, train_eval = datamodule.train_set, datamodule.train_eval_set
    assert train.indices == train_eval.indices
    torch.manual_seed(0)
    plain = train_eval[0][0]
    assert all(torch.equal(train_eval[0][0], plain) for _ in range(5))
    augmented = [train[0][0] for _ in range(20)]
    assert any(not torch.equal(view, plain) for view in augmented)
    # Every view must be a 32x32 window of the zero-padded (by 4) image, possibly mirrored.
    raw = torch.nn.functional.pad(train_eval.dataset.images[train_eval.indices[0]], (4, 4, 4, 4))
    windows = [raw[:, top : top + 32, left : left + 32] for top in range(9) for left in range(9)]
    candidates = [datamodule_normalise(w) for w in windows + [w.flip(-1) for w in windows]]
    assert all(any(torch.allclose(view, c, atol=1e-5) for c in candidates) for view in augmented)

    off = CIFAR10DataModule(root=tmp_path, download=False, augment=False)
    off.setup()
    assert torch.equal(off.train_set[0][0], off.train_eval_set[0][0])


def datamodule_normalise(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10DataModule.mean).view(3, 1, 1)
    std = torch.tensor(CIFAR10DataModule.std).view(3, 1, 1)
    return (image.float() / 255 - mean) / std


def test_validation_split_ignores_the_run_seed(tmp_path, official):
    write_fake_cifar(tmp_path, CIFAR100DataModule, official)

    def validation_indices(run_seed: int) -> list[int]:
        pl.seed_everything(run_seed)
        datamodule = CIFAR100DataModule(root=tmp_path, val_fraction=0.5, download=False)
        datamodule.setup()
        return list(datamodule.val_set.indices)

    assert validation_indices(3) == validation_indices(4)


def test_damaged_batch_is_reported(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConsparseError, match="not a CIFAR batch"):
        read_cifar_batch(tmp_path / "bad", "labels")
    write_batch(tmp_path / "wrong_key", 2, "labels", 10, seed=0)
    with pytest.raises(ConsparseError, match="fine_labels"):
        read_cifar_batch(tmp_path / "wrong_key", "fine_labels")


def test_labels_out_of_range_are_reported(tmp_path, official):
    write_fake_cifar(tmp_path, CIFAR100DataModule, official)
    # CIFAR-100 labels (up to 99) under a CIFAR-10 folder name: the wrong dataset in the wrong place.
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        write_batch(tmp_path / "cifar-10-batches-py" / name, 4, "labels", 100, seed=7)
        official(tmp_path, tmp_path / "cifar-10-batches-py" / name)
    with pytest.raises(ConsparseError, match="labels outside"):
        CIFAR10DataModule(root=tmp_path, download=False).setup()


def test_missing_files_name_the_paths(module_cls, tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        module_cls(root=tmp_path, download=False).setup()
    message = str(error.value)
    for path in module_cls(root=tmp_path).required_files():
        assert str(path) in message
    assert module_cls.torchvision_dataset.url in message


def test_offline_download_fails_fast_with_the_paths(module_cls, tmp_path, monkeypatch):
    timeouts = []

    def offline_download(url, root, filename, md5):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline_download)
    with pytest.raises(DataNotFoundError) as error:
        module_cls(root=tmp_path, download=True, download_timeout=2.0).check_available()
    assert timeouts == [2.0]
    assert "download failed" in str(error.value)
    assert str(module_cls(root=tmp_path).required_files()[0]) in str(error.value)


def test_download_unpacks_the_archive(tmp_path, monkeypatch, official):
    staging = tmp_path / "staging"
    write_fake_cifar(staging, CIFAR100DataModule)
    archive = tmp_path / CIFAR100.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / CIFAR100.base_folder, arcname=CIFAR100.base_folder)
    root = tmp_path / "root"
    for name in ("train", "test"):
        official(staging, staging / CIFAR100.base_folder / name)
    monkeypatch.setitem(cifar.OFFICIAL_MD5, CIFAR100.filename, file_digest(archive))

    def fake_download(url, root, filename, md5):
        assert url == CIFAR100.url and filename == CIFAR100.filename
        Path(root, filename).write_bytes(archive.read_bytes())

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    datamodule = CIFAR100DataModule(root=root, download=True, val_fraction=0.0)
    datamodule.setup()
    assert len(datamodule.train_set) == PER_BATCH and len(datamodule.test_set) == PER_BATCH


def test_official_checksums_are_torchvisions():
    expected = {}
    for tv in (CIFAR10, CIFAR100):
        expected[tv.filename] = tv.tgz_md5
        expected.update({f"{tv.base_folder}/{name}": md5 for name, md5 in tv.train_list + tv.test_list})
    assert cifar.OFFICIAL_MD5 == expected


class FileCreator:
    """A pickle payload: unpickling it with the full ``pickle`` module creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_payload(root: Path, marker: Path) -> Path:
    """CIFAR-10's batches under ``root``, the first one replaced by a payload pickle."""
    write_fake_cifar(root, CIFAR10DataModule)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    entry = {"batch_label": "x", "labels": [0], "data": FileCreator(marker), "filenames": ["0.png"]}
    path.write_bytes(pickle.dumps(entry, protocol=2))
    return path


def test_payload_batch_is_refused_by_its_checksum(tmp_path):
    marker = tmp_path / "pwned"
    path = plant_payload(tmp_path / "root", marker)
    with pytest.raises(ParameterError) as error:
        CIFAR10DataModule(root=tmp_path / "root", download=False).setup()
    assert error.value.name == "root"
    assert str(path) in str(error.value) and "MD5" in str(error.value)
    assert not marker.exists()


@pytest.mark.slow
def test_payload_batch_is_one_line_from_the_command_line(tmp_path):
    marker = tmp_path / "pwned"
    path = plant_payload(tmp_path / "data", marker)
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "method=dense", "dataset=cifar10", f"dataset.root={tmp_path / 'data'}",
         "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("consparse: error: dataset.root: ") and str(path) in lines[0]
    assert not marker.exists()


def test_payload_batch_with_the_official_checksum_runs_nothing(tmp_path, official):
    # Even a file the checksum table accepts (a collision, or a test's own file) cannot run code.
    marker = tmp_path / "pwned"
    root = tmp_path / "root"
    path = plant_payload(root, marker)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        official(root, root / "cifar-10-batches-py" / name)
    with pytest.raises(ParameterError) as error:
        CIFAR10DataModule(root=root, download=False).setup()
    assert str(path) in str(error.value) and "refused to load" in str(error.value)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "batch"
    entry = {"labels": [0], "data": np.array([FileCreator(tmp_path / "pwned")], dtype=object)}
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ParameterError, match="not a CIFAR batch"):
        read_cifar_batch(path, "labels")
    assert not (tmp_path / "pwned").exists()


def test_placed_archive_with_the_wrong_checksum_is_not_unpacked(tmp_path):
    staging = tmp_path / "staging"
    write_fake_cifar(staging, CIFAR10DataModule)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / CIFAR10.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / CIFAR10.base_folder, arcname=CIFAR10.base_folder)
    with pytest.raises(ParameterError) as error:
        CIFAR10DataModule(root=root, download=True).setup()
    assert str(archive) in str(error.value) and "MD5" in str(error.value)
    assert sorted(path.name for path in root.iterdir()) == [CIFAR10.filename]


@pytest.mark.parametrize("unsafe", ["dotdot", "symlink"])
def test_placed_archive_escaping_the_root_is_refused_and_leaves_no_trace(tmp_path, monkeypatch, unsafe):
    root = tmp_path / "data" / "root"
    root.mkdir(parents=True)
    archive = root / CIFAR10.filename
    payload = tmp_path / "payload.txt"
    payload.write_text("owned")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname=f"{CIFAR10.base_folder}/data_batch_2")
        if unsafe == "dotdot":
            tar.add(payload, arcname="../escape.txt")
            member = "../escape.txt"
        else:
            # A batch that is a link to a file outside the root: reading it would read that file.
            link = tarfile.TarInfo(f"{CIFAR10.base_folder}/data_batch_1")
            link.type, link.linkname = tarfile.SYMTYPE, str(payload)
            tar.addfile(link)
            member = link.name
    monkeypatch.setitem(cifar.OFFICIAL_MD5, CIFAR10.filename, file_digest(archive))
    with pytest.raises(ParameterError) as error:
        CIFAR10DataModule(root=root, download=True).setup()
    assert str(archive) in str(error.value) and member in str(error.value)
    assert not (root.parent / "escape.txt").exists() and not (root / CIFAR10.base_folder).exists()


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the official files: protocol 2, ``str`` as byte strings
    (SHORT_BINSTRING / BINSTRING), the array through ``numpy.core.multiarray._reconstruct``."""
    op = pickle

    def short(text: str) -> bytes:
        return op.SHORT_BINSTRING + bytes([len(text)]) + text.encode("latin1")

    def int1(value: int) -> bytes:
        return op.BININT1 + bytes([value])

    def int4(value: int) -> bytes:
        return op.BININT + value.to_bytes(4, "little", signed=True)

    dtype = (
        b"cnumpy\ndtype\n" + short("u1") + int1(0) + int1(1) + op.TUPLE3 + op.REDUCE
        + op.MARK + int1(3) + short("|") + op.NONE + op.NONE + op.NONE + int4(-1) + int4(-1) + int1(0)
        + op.TUPLE + op.BUILD
    )
    raw = data.tobytes()
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + int1(0) + op.TUPLE1 + short("b")
        + op.TUPLE3 + op.REDUCE
        + op.MARK + int1(1) + int4(data.shape[0]) + int4(data.shape[1]) + op.TUPLE2 + dtype + op.NEWFALSE
        + op.BINSTRING + len(raw).to_bytes(4, "little") + raw + op.TUPLE + op.BUILD
    )
    label_list = op.EMPTY_LIST + op.MARK + b"".join(int1(v) for v in labels) + op.APPENDS
    return (
        op.PROTO + bytes([2]) + op.EMPTY_DICT + op.MARK
        + short("batch_label") + short("training batch 1 of 5")
        + short("labels") + label_list
        + short("data") + array
        + op.SETITEMS + op.STOP
    )


def test_python2_pickles_like_the_official_files_are_read(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_batch(data, [3, 1, 4]))
    reference = pickle.loads(path.read_bytes(), encoding="latin1")  # our own bytes: what torchvision would get
    assert np.array_equal(reference["data"], data) and reference["batch_label"] == "training batch 1 of 5"
    images, labels = read_cifar_batch(path, "labels")
    assert np.array_equal(images, data.reshape(3, 3, 32, 32)) and labels.tolist() == [3, 1, 4]
