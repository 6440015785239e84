"""What a DDP run does to itself, each fed what the other rank would send (one process, no group): it
names ranks that end the fit in different states, stops processes given different run directories,
gives each rank a random stream of its own, and synchronises BatchNorm with the gate-keeping plugin."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from consparse import train as train_module
from consparse.callbacks import DistinctRankStreams, RankAgreement, SharedRunDirectory, TrainTimer, ranks
from consparse.errors import ConfigError
from consparse.gates.sync_batchnorm import SyncBatchNormKeepingGates


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def _other_rank_sends(monkeypatch: pytest.MonkeyPatch, change) -> None:
    def all_gather(parts: list[torch.Tensor], local: torch.Tensor) -> None:
        parts[0].copy_(local)
        parts[1].copy_(change(local.clone()))

    monkeypatch.setattr(ranks.dist, "all_gather", all_gather)


def _agreement(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str] | None:
    callback = RankAgreement()
    trainer = SimpleNamespace(world_size=2, optimizers=[optimizer], is_global_zero=True)
    callback.on_train_end(trainer, model)
    return callback.disagreeing


def test_ranks_in_the_same_state_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    _other_rank_sends(monkeypatch, lambda values: values)
    assert _agreement(*_trained()) == []


def test_a_rank_with_another_weight_or_momentum_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer = _trained()
    names = [name for name, _ in ranks._trained_state(model, [optimizer])]
    # BatchNorm statistics are rank 0's before every forward and each rank's own after the last one.
    assert "1.running_mean" not in names and "1.num_batches_tracked" not in names
    weight, momentum = names.index("0.weight"), names.index("optimizer0.0.bias.momentum_buffer")

    def change(values: torch.Tensor) -> torch.Tensor:
        values[weight, 0] += 1e-6
        values[momentum, 1] += 1.0
        return values

    _other_rank_sends(monkeypatch, change)
    assert _agreement(model, optimizer) == ["0.weight", "optimizer0.0.bias.momentum_buffer"]


def test_a_single_process_is_not_checked() -> None:
    callback = RankAgreement()
    callback.on_train_end(SimpleNamespace(world_size=1), nn.Linear(2, 2))
    assert callback.disagreeing is None


def test_processes_with_different_run_directories_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def all_gather_object(parts: list, local: str, other: str = str(tmp_path / "elsewhere")) -> None:
        parts[:] = [local, other]

    monkeypatch.setattr(ranks.dist, "all_gather_object", all_gather_object)
    check = SharedRunDirectory(tmp_path / "run")
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        check.setup(SimpleNamespace(world_size=2), None, "fit")
    monkeypatch.setattr(ranks.dist, "all_gather_object", lambda parts, local: parts.__setitem__(slice(None), [local] * 2))
    check.setup(SimpleNamespace(world_size=2), None, "fit")


def test_ranks_draw_different_dropout_masks_and_rank_zero_keeps_the_run_stream() -> None:
    draws = {}
    for rank in (0, 1, 2):
        torch.manual_seed(5)  # what seed_everything does in every process
        DistinctRankStreams().setup(SimpleNamespace(world_size=3, global_rank=rank), None, "fit")
        draws[rank] = torch.rand(8)
    torch.manual_seed(5)
    assert torch.equal(draws[0], torch.rand(8))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    torch.manual_seed(5)
    DistinctRankStreams().setup(SimpleNamespace(world_size=3, global_rank=1), None, "fit")
    assert torch.equal(torch.rand(8), draws[1]), "a rank's stream is reproducible"


@pytest.mark.parametrize("sync", [True, False])
def test_sync_batchnorm_uses_the_plugin_that_keeps_gates(make_config, tmp_path: Path, sync: bool) -> None:
    cfg = make_config("method=l0", "hardware=cpu_ddp", f"+trainer.sync_batchnorm={str(sync).lower()}")
    trainer = train_module._build_trainer(cfg, tmp_path / "run", TrainTimer())
    assert isinstance(trainer.strategy._layer_sync, SyncBatchNormKeepingGates) is sync
    if not sync:
        assert trainer.strategy._layer_sync is None
