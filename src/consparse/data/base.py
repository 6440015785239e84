"""The one LightningDataModule every dataset goes through.

A dataset subclass says what it is (``info``), which files it needs (``required_files``), how to
fetch them (``download``) and how to build its three splits (``build_splits``). This base class does
the rest the same way for every dataset: the validation split carved from the training set with a
fixed seed (so seeds of a sweep share it), the global batch divided over DDP ranks, and the loaders.

Training batches come either from a DataLoader (``num_workers`` processes transform the items,
memory pinned for the copy to a GPU, workers kept between epochs) or, for datasets whose training
split is one uint8 image tensor (``Splits.train_tensors``) and ``on_device`` allows it, from
``DeviceBatches``: the images kept on the trainer's device and augmented there in batches.

The training order, on either path, is the same for any number of processes: one permutation per
epoch, drawn from the run seed and the epoch (``DistributedSampler``'s), is cut into global batches,
and rank ``r`` of ``W`` takes every ``W``-th sample of it, so the ranks' shares of a step together are the global batch
one process would take (torch's ``RandomSampler``, which Lightning replaces only under DDP, draws a
different order). The validation loader splits its samples over the ranks without the padding
Lightning's sampler adds, so that metrics summed over ranks count every sample once. The test and
train-eval loaders are never split: the final evaluation runs in one process on the whole split.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from consparse.data.device_batches import DeviceBatches, EpochSampler, ImageTensors
from consparse.data.info import DatasetInfo
from consparse.errors import ConfigPlace, ConsparseError, DataNotFoundError, ParameterError, config_key
from consparse.validation import check_int, check_range


@dataclass
class Splits:
    """``train`` may augment; ``train_eval`` holds the same samples in the same order without augmentation.

    ``train_tensors``, where given, is the training split as uint8 images with ``train``'s
    augmentation, for making batches on the device.
    """

    train: Dataset
    train_eval: Dataset
    test: Dataset
    train_tensors: ImageTensors | None = None


class ConsparseDataModule(pl.LightningDataModule, ABC):
    """Base datamodule: validation split from train, test split for the final numbers.

    Args:
        root: directory that holds (or will hold) the dataset files.
        batch_size: global training batch; under DDP each rank gets ``batch_size / world_size``.
        eval_batch_size: batch for validation, test and evaluation loops (defaults to ``batch_size``).
        val_fraction: fraction of the training set held out for validation, in [0, 0.5].
        split_seed: seed of the train/validation split (kept apart from the run seed on purpose).
        num_workers: DataLoader worker processes.
        download: fetch missing files when a network is available.
        max_train_samples: use only the first N training samples (after the split); for quick runs.
        on_device: ``auto`` keeps the training images on the GPU and augments them there when the
            trainer runs on one (datasets with ``supports_on_device``), ``true`` does so on whatever
            device the trainer uses (the CPU included), ``false`` always uses the DataLoader.
    """

    # Whether ``build_splits`` gives ``train_tensors`` (needed for ``on_device: true``).
    supports_on_device: ClassVar[bool] = False
    # The config key this data module was built from, set by the config boundary (``instantiate_node``);
    # None when built in code. Lightning reads the files in hooks it calls after the boundary, so those
    # hooks report a ``ParameterError`` (a bad file under ``root``) under this key themselves.
    config_place: ConfigPlace | None = None

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        num_workers: int = 0,
        download: bool = True,
        max_train_samples: int | None = None,
        on_device: bool | str = False,
    ) -> None:
        super().__init__()
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1, allow_none=True)
        check_range("val_fraction", val_fraction, 0.0, 0.5)
        check_int("split_seed", split_seed, 0)
        check_int("num_workers", num_workers, 0)
        check_int("max_train_samples", max_train_samples, 1, allow_none=True)
        if on_device is not True and on_device is not False and on_device != "auto":
            raise ParameterError("on_device", f"got {on_device!r}; allowed: auto, true or false")
        if on_device is True and not self.supports_on_device:
            raise ParameterError(
                "on_device",
                f"{type(self).__name__} has no in-memory uint8 training images to keep on the device; use false",
            )
        self.root = Path(os.path.expanduser(str(root)))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.download = download
        self.max_train_samples = max_train_samples
        self.on_device = on_device
        self.train_set: Subset | None = None
        self.train_tensors: ImageTensors | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.train_eval_set: Dataset | None = None

    # ----------------------------------------------------------------- what a dataset implements
    @property
    @abstractmethod
    def info(self) -> DatasetInfo:
        """Input shape, class count and kind; must not read any file."""

    def required_files(self) -> list[Path]:
        """Files that must exist before ``build_splits``; empty for embedded or generated data."""
        return []

    def how_to_get(self) -> str:
        """One paragraph telling the user how to obtain the files when they are missing."""
        return ""

    def download_files(self) -> None:
        """Fetch the missing files; raise on failure. Only called when ``download`` is true."""

    @abstractmethod
    def build_splits(self) -> Splits:
        """Read the files and return the train, train-without-augmentation and test datasets."""

    # ----------------------------------------------------------------- shared behaviour
    def missing_files(self) -> list[Path]:
        return [path for path in self.required_files() if not path.exists()]

    def check_available(self) -> None:
        """Raise DataNotFoundError (naming the paths) if files are missing and cannot be fetched.

        Called before any training so that a missing dataset never costs compute. Downloads are
        attempted here when allowed; a failed download is reported with the same instructions.
        """
        with config_key(self.config_place):
            self.ensure_available()

    def ensure_available(self) -> None:
        """What ``check_available`` does inside the config boundary; a dataset with another source overrides it."""
        missing = self.missing_files()
        if not missing:
            return
        problem = ""
        if self.download:
            try:
                self.download_files()
            except ConsparseError:
                raise  # a file that is there but wrong (checksum, unsafe archive) is not a failed download
            except Exception as exc:  # noqa: BLE001 - any network or IO failure means "not available"
                problem = f"The download failed ({type(exc).__name__}: {exc}).\n"
            missing = self.missing_files()
            if not missing:
                return
        else:
            problem = "dataset.download is false, so nothing was fetched.\n"
        listing = "\n".join(f"  - {path}" for path in missing)
        raise DataNotFoundError(
            f"dataset '{self.info.name}': files missing under dataset.root={self.root}:\n{listing}\n"
            f"{problem}{self.how_to_get()}".rstrip()
        )

    def prepare_data(self) -> None:
        self.check_available()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_available()
        with config_key(self.config_place):
            splits = self.build_splits()
        n = len(splits.train)
        if len(splits.train_eval) != n:
            raise RuntimeError(f"{type(self).__name__}: train and train_eval differ in length")
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(n, generator=generator).tolist()
        n_val = round(self.val_fraction * n)
        val_idx, train_idx = order[:n_val], order[n_val:]
        if self.max_train_samples is not None:
            train_idx = train_idx[: self.max_train_samples]
        self.train_set = Subset(splits.train, train_idx)
        self.train_tensors = splits.train_tensors
        self.train_eval_set = Subset(splits.train_eval, train_idx)
        # With no held-out samples the validation loop watches the test split, and says so in its name.
        self.val_set = Subset(splits.train_eval, val_idx) if n_val > 0 else splits.test
        self.test_set = splits.test

    @property
    def per_device_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            with config_key(self.config_place):
                raise ParameterError(
                    "batch_size",
                    f"{self.batch_size} is not divisible by the {world} DDP processes; it is the global batch",
                )
        return self.batch_size // world

    def _process(self) -> tuple[int, int]:
        """``(rank, world size)`` of the trainer this datamodule serves, ``(0, 1)`` outside a fit."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _loader(self, dataset: Dataset, batch_size: int, sampler: DistributedSampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def batch_device(self) -> torch.device | None:
        """The device training batches are made on by ``DeviceBatches``; None for the DataLoader."""
        if self.on_device is False or self.train_tensors is None:
            return None
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.on_device == "auto" and device.type != "cuda":
            return None
        return device

    def device_batches(self, device: torch.device) -> DeviceBatches:
        """This process's training batches, made on ``device`` (shuffled and sharded like DistributedSampler).

        The shuffle seed is the run's (``PL_GLOBAL_SEED``, set by ``seed_everything``), as Lightning
        seeds the DistributedSampler it adds to a DataLoader.
        """
        indices = torch.as_tensor(self.train_set.indices, dtype=torch.long)
        tensors = replace(
            self.train_tensors, images=self.train_tensors.images[indices], labels=self.train_tensors.labels[indices]
        )
        rank, world = self._process()
        sampler = EpochSampler(
            len(indices), seed=_shuffle_seed(), rank=rank, world_size=world,
            padding=tensors.padding, flip=tensors.flip, rotation=tensors.rotation,
        )
        return DeviceBatches(tensors, self.per_device_batch_size, device, sampler)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        self.setup()
        device = self.batch_device()
        if device is not None:
            return self.device_batches(device)
        rank, world = self._process()
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=_shuffle_seed())
        return self._loader(self.train_set, self.per_device_batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        rank, world = self._process()
        sampler = (
            UnrepeatedDistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
        )
        return self._loader(self.val_set, self.eval_batch_size, sampler)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, self.eval_batch_size)

    def held_out_dataloader(self) -> DataLoader | None:
        """The validation split in one process, for the final measurement; None when no samples are
        held out (``val_fraction`` 0, where the validation loop watches the test split)."""
        self.setup()
        if self.val_set is self.test_set:
            return None
        return self._loader(self.val_set, self.eval_batch_size)

    def train_eval_dataloader(self, max_samples: int | None = None, batch_size: int | None = None) -> DataLoader:
        """Training samples without augmentation or shuffling (BN recalibration, state extraction)."""
        self.setup()
        dataset = self.train_eval_set
        if max_samples is not None and max_samples < len(dataset):
            dataset = Subset(dataset, list(range(max_samples)))
        return self._loader(dataset, batch_size or self.eval_batch_size)


def _shuffle_seed() -> int:
    """The run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED``), as Lightning's own distributed sampler takes it."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))

