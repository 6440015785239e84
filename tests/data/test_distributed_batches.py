"""The global batch of a step is the same for any number of DDP processes (the ranks' shares together are
one process's batch), each epoch reshuffles alike, and validation counts every sample once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from consparse.data.digits import DigitsDataModule

GLOBAL_BATCH = 32


def _steps(world: int, epoch: int, seed: int = 0) -> list[list[set[int]]]:
    """Per step, each rank's sample indices."""
    datamodule = DigitsDataModule(batch_size=GLOBAL_BATCH, max_train_samples=256)
    shares = []
    for rank in range(world):
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        loader = datamodule.train_dataloader()
        assert loader.batch_size == GLOBAL_BATCH // world
        loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
        indices = list(loader.sampler)
        shares.append([set(indices[i:i + loader.batch_size]) for i in range(0, len(indices), loader.batch_size)])
    return [list(step) for step in zip(*shares)]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_share_the_single_process_batch_of_every_step(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    for epoch in (0, 1):
        single = _steps(1, epoch)
        split = _steps(world, epoch)
        assert len(split) == len(single) == 256 // GLOBAL_BATCH
        for one, shares in zip(single, split):
            assert set().union(*shares) == one[0]
            assert sum(len(share) for share in shares) == GLOBAL_BATCH
    assert _steps(1, 0)[0] != _steps(1, 1)[0], "each epoch draws a new order"


def test_the_order_follows_the_run_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    first = _steps(1, 0)
    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    assert _steps(1, 0) != first


def test_validation_is_split_without_repeating_a_sample() -> None:
    datamodule = DigitsDataModule(batch_size=GLOBAL_BATCH, val_fraction=0.1)
    seen = []
    for rank in range(3):
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        seen += list(datamodule.val_dataloader().sampler)
    assert sorted(seen) == list(range(len(datamodule.val_set)))
    datamodule.trainer = SimpleNamespace(global_rank=1, world_size=3)
    assert len(list(datamodule.test_dataloader().sampler)) == len(datamodule.test_set), "the test split is never split"
