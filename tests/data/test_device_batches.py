"""Batches augmented on the device: the same images and the same distribution as torchvision's
per-item RandomCrop(padding=4) + RandomHorizontalFlip, sharded like DistributedSampler.

Everything runs on the CPU device here; on a GPU the same code runs with the tensors there.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from scipy.stats import chi2_contingency, chisquare
from torch import nn
from torchvision.transforms import v2

from consparse.data.cifar import CIFAR10DataModule
from consparse.data.device_batches import DeviceBatches, EpochSampler, ImageTensors, crop_and_flip
from consparse.data.digits import DigitsDataModule
from consparse.data.mnist import MNISTDataModule
from consparse.data.tensor_images import image_transform
from consparse.errors import ParameterError

from .test_cifar_datamodule import official, write_fake_cifar  # noqa: F401 - the fixture is used by name
from .test_mnist_datamodule import write_fake_split_files

PADDING = 4
POSITIONS = 2 * PADDING + 1


def torchvision_view(image: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip with these draws forced."""
    crop = v2.RandomCrop(image.shape[-1], padding=PADDING)
    params = {**crop.make_params([image]), "top": top, "left": left}
    cropped = crop.transform(image, params)
    return v2.RandomHorizontalFlip(p=1.0)(cropped) if flip else cropped


def test_every_crop_and_flip_is_pixel_exact_against_torchvision():
    generator = torch.Generator().manual_seed(0)
    draws = list(itertools.product(range(POSITIONS), range(POSITIONS), (False, True)))
    images = torch.randint(0, 256, (len(draws), 3, 32, 32), dtype=torch.uint8, generator=generator)
    top, left, flip = (torch.tensor(column) for column in zip(*draws))
    ours = crop_and_flip(images, top, left, flip, PADDING)
    assert ours.dtype == torch.uint8 and ours.shape == images.shape
    for i, (t, l, f) in enumerate(draws):
        assert torch.equal(ours[i], torchvision_view(images[i], t, l, f)), (t, l, f)


def test_non_square_images_crop_the_same_way():
    image = torch.randint(0, 256, (1, 2, 5, 7), dtype=torch.uint8)
    ours = crop_and_flip(image, torch.tensor([3]), torch.tensor([1]), torch.tensor([True]), 2)
    expected = torch.nn.functional.pad(image, (2, 2, 2, 2))[..., 3 : 3 + 5, 1 : 1 + 7].flip(-1)
    assert torch.equal(ours, expected)


def draws_of(sampler: EpochSampler) -> np.ndarray:
    plan = sampler.plan()
    return np.stack([plan.top.numpy(), plan.left.numpy(), plan.flip.numpy().astype(int)], axis=1)


def test_offsets_and_flips_have_torchvisions_distribution():
    ours = draws_of(EpochSampler(16_200, seed=3, padding=PADDING, flip=True))
    assert ours[:, :2].min() == 0 and ours[:, :2].max() == 2 * PADDING
    cells = (ours[:, 0] * POSITIONS + ours[:, 1]) * 2 + ours[:, 2]
    counts = np.bincount(cells, minlength=POSITIONS * POSITIONS * 2)
    assert (counts > 0).all(), "every one of the 81 crop positions x 2 flips must be reachable"
    assert chisquare(counts).pvalue > 1e-4  # uniform over the 162 draws, as torchvision's randint/rand

    # torchvision's own draws, for the marginal frequencies side by side.
    torch.manual_seed(0)
    crop, image = v2.RandomCrop(32, padding=PADDING), torch.zeros(3, 32, 32, dtype=torch.uint8)
    theirs = np.array([[p["top"], p["left"]] for p in (crop.make_params([image]) for _ in range(4000))])
    for axis in (0, 1):
        table = np.stack(
            [np.bincount(ours[:, axis], minlength=POSITIONS), np.bincount(theirs[:, axis], minlength=POSITIONS)]
        )
        assert chi2_contingency(table).pvalue > 1e-4
    assert abs(ours[:, 2].mean() - 0.5) < 4 * 0.5 / np.sqrt(len(ours))


def test_shards_are_disjoint_and_together_make_the_single_process_batches():
    n, batch, world = 23, 4, 2
    single = EpochSampler(n, seed=5, padding=PADDING, flip=True)
    single.set_epoch(2)
    ranks = [EpochSampler(n, seed=5, rank=r, world_size=world, padding=PADDING, flip=True) for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(2)
    plans = [sampler.plan() for sampler in ranks]
    assert all(len(plan.indices) == 12 for plan in plans)  # padded to a multiple of the world size
    assert set(plans[0].indices.tolist()) | set(plans[1].indices.tolist()) == set(range(n))
    whole = single.plan()
    padded = torch.cat([whole.indices, whole.indices[: 24 - n]])
    for k in range(3):
        global_batch = padded[k * batch * world : (k + 1) * batch * world].tolist()
        per_rank = [plan.indices[k * batch : (k + 1) * batch].tolist() for plan in plans]
        assert sorted(global_batch) == sorted(per_rank[0] + per_rank[1])
    # A sample's crop and flip do not depend on how many processes share the epoch.
    for r, plan in enumerate(plans):
        for j, index in enumerate(plan.indices[:10].tolist()):
            position = r + world * j
            assert index == whole.indices[position].item()
            assert (plan.top[j], plan.left[j], plan.flip[j]) == (
                whole.top[position], whole.left[position], whole.flip[position]
            )


def test_each_epoch_reshuffles_and_repeats_with_the_seed():
    sampler = EpochSampler(50, seed=1, padding=PADDING, flip=True)
    first = sampler.plan().indices
    sampler.set_epoch(1)
    second = sampler.plan().indices
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
    assert not torch.equal(first, second)
    sampler.set_epoch(0)
    assert torch.equal(sampler.plan().indices, first)
    plain = EpochSampler(5, shuffle=False)
    assert plain.plan().indices.tolist() == [0, 1, 2, 3, 4] and not plain.plan().flip.any()


def test_device_batches_are_normalised_views_of_the_right_images():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(10)
    tensors = ImageTensors(images, labels, CIFAR10DataModule.mean, CIFAR10DataModule.std, PADDING, True)
    transform = image_transform(CIFAR10DataModule.mean, CIFAR10DataModule.std)
    sampler = EpochSampler(10, seed=0, padding=PADDING, flip=True)
    batches = DeviceBatches(tensors, 4, "cpu", sampler)
    assert len(batches) == 3
    plan = sampler.plan()
    seen = []
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape[1:] == (3, 32, 32)
        seen += y.tolist()
        for image, label in zip(x, y):
            j = len(seen) - len(y) + list(y).index(label)
            expected = torchvision_view(images[label], plan.top[j].item(), plan.left[j].item(), plan.flip[j].item())
            assert torch.equal(image, transform(expected))
    assert seen == plan.indices.tolist()


def tiny_model() -> pl.LightningModule:
    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
            self.epochs_seen: list[list[int]] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            if batch_idx == 0:
                self.epochs_seen.append(y.tolist())
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Tiny()


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
def test_cifar_on_device_trains_through_lightning_and_reshuffles_each_epoch(tmp_path, official):  # noqa: F811
    write_fake_cifar(tmp_path, CIFAR10DataModule, official)
    datamodule = CIFAR10DataModule(root=tmp_path, download=False, batch_size=8, on_device=True, val_fraction=0.0)
    model = tiny_model()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    loader = trainer.train_dataloader
    assert isinstance(loader, DeviceBatches) and loader.sampler.epoch == 2
    assert len(model.epochs_seen) == 3 and model.epochs_seen[0] != model.epochs_seen[1]


def test_auto_uses_the_dataloader_on_the_cpu_and_true_the_device(tmp_path, official):  # noqa: F811
    write_fake_cifar(tmp_path, CIFAR10DataModule, official)
    auto = CIFAR10DataModule(root=tmp_path, download=False, batch_size=4, on_device="auto")
    assert isinstance(auto.train_dataloader(), torch.utils.data.DataLoader)
    forced = CIFAR10DataModule(root=tmp_path, download=False, batch_size=4, on_device=True)
    batches = forced.train_dataloader()
    assert isinstance(batches, DeviceBatches) and batches.images.shape[0] == len(forced.train_set)
    # Only the training indices are kept on the device, in the split's order.
    assert torch.equal(batches.images, forced.train_eval_set.dataset.images[forced.train_set.indices])
    x, y = next(iter(batches))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long


def test_without_augmentation_device_batches_equal_the_evaluation_view(tmp_path, official):  # noqa: F811
    write_fake_cifar(tmp_path, CIFAR10DataModule, official)
    datamodule = CIFAR10DataModule(root=tmp_path, download=False, batch_size=5, on_device=True, augment=False)
    batches = datamodule.train_dataloader()
    order = batches.sampler.plan().indices.tolist()
    x, _ = next(iter(batches))
    for row, position in zip(x, order):
        assert torch.equal(row, datamodule.train_eval_set[position][0])  # bit-identical to the per-item path


def test_mnist_on_device_matches_its_tensor_dataset(tmp_path):
    write_fake_split_files(tmp_path / "MNIST" / "raw")
    datamodule = MNISTDataModule(root=tmp_path, download=False, batch_size=7, on_device=True)
    batches = datamodule.train_dataloader()
    order = batches.sampler.plan().indices.tolist()
    x, y = next(iter(batches))
    assert x.shape == (7, 1, 28, 28)
    for row, label, position in zip(x, y, order):
        image, expected_label = datamodule.train_set[position]
        assert torch.allclose(row, image, atol=1e-5) and label == expected_label


def test_on_device_is_refused_where_there_are_no_images():
    with pytest.raises(ParameterError) as error:
        DigitsDataModule(on_device=True)
    assert error.value.name == "on_device"
    with pytest.raises(ParameterError, match="auto, true or false"):
        CIFAR10DataModule(on_device="gpu")
    assert DigitsDataModule(on_device="auto").batch_device() is None


def run_train(args: list[str], cwd) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    train = Path(__file__).resolve().parents[2] / "train.py"
    result = subprocess.run(
        [sys.executable, str(train), *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_train_the_same_weights_as_one(tmp_path):
    # The ranks' on-device batches together are the single-process batch, so plain data-parallel
    # SGD (gradients averaged over equal shards) reaches the same weights.
    write_fake_split_files(tmp_path / "data" / "MNIST" / "raw")
    common = [
        "method=dense", "model=mlp", "dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.on_device=true",
        "dataset.batch_size=10", "dataset.max_train_samples=40", "trainer.max_epochs=2",
        "evaluation.compression_grid=null", "evaluation.export=false", "evaluation.latency.min_run_time=0.01",
        "evaluation.latency.rounds=1",
    ]
    run_train([*common, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    run_train([*common, "hardware=cpu_ddp", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path)
    one, two = (
        torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for name in ("one", "two")
    )
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), atol=1e-5), key
    assert any(not torch.equal(one[key], 0 * one[key]) for key in one)
