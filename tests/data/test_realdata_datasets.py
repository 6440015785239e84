"""The real offline copies in ../shared/data: MNIST, Fashion-MNIST and 20 Newsgroups.

Numbers checked here are those documented in shared/data/README.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from consparse.data.mnist import (
    TEST_IMAGES,
    TRAIN_IMAGES,
    FashionMNISTDataModule,
    MNISTDataModule,
    read_idx_gz,
)
from consparse.data.newsgroups import NewsgroupsDataModule

# Each test takes the `shared_data` fixture of tests/conftest.py, which skips when the folder is absent.
pytestmark = pytest.mark.realdata

NEWSGROUPS_TRAIN_COUNTS = [
    480,
    584,
    591,
    590,
    578,
    593,
    585,
    594,
    598,
    597,
    600,
    595,
    591,
    594,
    593,
    599,
    546,
    564,
    465,
    377,
]
NEWSGROUPS_TEST_COUNTS = [
    319,
    389,
    394,
    392,
    385,
    395,
    390,
    396,
    398,
    397,
    399,
    396,
    393,
    396,
    394,
    398,
    364,
    376,
    310,
    251,
]


@pytest.mark.parametrize(
    ("module_cls", "train_counts", "test_counts", "pixel_sums"),
    [
        (
            MNISTDataModule,
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
            (1_567_298_545, 264_923_200),
        ),
        (FashionMNISTDataModule, [6000] * 10, [1000] * 10, (3_431_114_169, 573_469_082)),
    ],
    ids=["mnist", "fashion_mnist"],
)
def test_idx_datasets(module_cls, train_counts, test_counts, pixel_sums, shared_data):
    datamodule = module_cls(root=shared_data, download=False, val_fraction=0.1)
    datamodule.setup()
    train_images, train_labels = datamodule.train_eval_set.dataset.tensors
    test_images, test_labels = datamodule.test_set.tensors
    assert train_images.shape == (60_000, 1, 28, 28) and test_images.shape == (10_000, 1, 28, 28)
    assert torch.bincount(train_labels).tolist() == train_counts
    assert torch.bincount(test_labels).tolist() == test_counts
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (54_000, 6_000)
    assert abs(train_images.mean().item()) < 0.01 and abs(train_images.std().item() - 1) < 0.01
    raw_dir = shared_data / module_cls.folder / "raw"
    sums = tuple(
        int(read_idx_gz(raw_dir / name).astype(np.int64).sum()) for name in (TRAIN_IMAGES, TEST_IMAGES)
    )
    assert sums == pixel_sums


def test_newsgroups_from_the_tarball_and_its_cache(tmp_path, shared_data):
    options = {"root": shared_data, "download": False, "vocab_size": 2000, "cache_dir": tmp_path}
    datamodule = NewsgroupsDataModule(**options)
    assert datamodule.resolved_source == "tarball"
    datamodule.setup()
    train_x, train_y = datamodule.train_eval_set.dataset.tensors
    test_x, test_y = datamodule.test_set.tensors
    assert (
        train_x.shape == (11_314, 2000) and test_x.shape == (7_532, 2000) and train_x.dtype == torch.float32
    )
    assert torch.bincount(train_y).tolist() == NEWSGROUPS_TRAIN_COUNTS
    assert torch.bincount(test_y).tolist() == NEWSGROUPS_TEST_COUNTS
    assert torch.allclose(train_x.norm(dim=1)[train_x.abs().sum(dim=1) > 0], torch.ones(1), atol=1e-4)
    assert len(list(tmp_path.glob("newsgroups20-*.safetensors"))) == 1

    cached = NewsgroupsDataModule(**options)
    cached.setup()
    assert torch.equal(cached.train_eval_set.dataset.tensors[0], train_x)
    assert torch.equal(cached.test_set.tensors[1], test_y)
