"""method=gmp: the cubic schedule, its defaults from the run length, pruning during training, the target."""

from __future__ import annotations

import itertools

import pytest
import torch

from consparse.compress.count import sparsifiable_weights
from consparse.compress.export import load_exported
from consparse.errors import ConfigError
from consparse.methods.gmp import CubicSchedule, default_schedule
from consparse.train import run


def test_schedule_values_at_start_middle_and_end() -> None:
    schedule = CubicSchedule(start=10, end=110, every=10, initial=1.0, final=0.1)
    assert schedule.density(0) == schedule.density(9) == 1.0
    assert schedule.density(10) == 1.0  # d_i at t_0
    # Half way: d_f + (d_i - d_f) (1/2)^3.
    assert schedule.density(60) == pytest.approx(0.1 + 0.9 * 0.125)
    assert schedule.density(110) == schedule.density(10_000) == pytest.approx(0.1)
    # Constant between pruning events.
    assert schedule.density(61) == schedule.density(69) == schedule.density(60)


def test_schedule_is_monotone_and_prunes_fast_first() -> None:
    schedule = CubicSchedule(start=0, end=97, every=7, initial=0.8, final=0.02)
    values = [schedule.density(step) for step in range(120)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(values))
    assert values[0] == pytest.approx(0.8) and values[97] == pytest.approx(0.02)
    drops = [a - b for a, b in itertools.pairwise(values) if a > b]
    assert drops == sorted(drops, reverse=True)  # each event removes less than the one before


def test_defaults_follow_the_run_length() -> None:
    schedule = default_schedule(1000, final=0.1)
    assert (schedule.start, schedule.end, schedule.every) == (100, 750, 6)
    assert (schedule.initial, schedule.final) == (1.0, 0.1)
    assert default_schedule(1000, 0.1, start=0, end=200, every=50).end == 200
    with pytest.raises(ConfigError, match="^end_step: "):
        default_schedule(100, 0.1, end=101)
    with pytest.raises(ConfigError, match="^start_step: "):
        default_schedule(100, 0.1, start=50, end=50)


COMMON = ("method=gmp", "trainer.max_epochs=2", "evaluation.compression_grid.unstructured=[]",
          "evaluation.compression_grid.lowrank=[]")


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_the_deployed_model_is_at_the_target_pruned_during_training(make_config, tmp_path, scope: str) -> None:
    results = run(make_config(*COMMON, "method.target_density=0.2", f"method.prune_scope={scope}",
                              "method.finetune_epochs=1", output_dir=tmp_path / scope))
    assert results["density"] == pytest.approx(0.2, abs=1e-3)
    metrics = results["method_metrics"]
    # The schedule reached the target during training (the epoch after it trained the final mask).
    assert metrics["density_before_finalize"] == pytest.approx(0.2)
    assert 0 < metrics["schedule"]["start_step"] < metrics["schedule"]["end_step"]
    weights = load_exported(tmp_path / scope).state_dict()
    if scope == "layer":
        for name, tensor in weights.items():
            if name.endswith("weight") and tensor.dim() > 1:
                assert float((tensor != 0).float().mean()) == pytest.approx(0.2, abs=0.01), name


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("method.target_density=null", "method.target_density"),
        ("method.initial_density=0.05", "method.initial_density"),
        ("method.prune_every=0", "method.prune_every"),
        ("method.prune_scope=rows", "method.prune_scope"),
        ("method.finetune_epochs=2", "method.finetune_epochs"),
        ("method.end_step=100000", "method.end_step"),
    ],
)
def test_bad_values_fail_before_training(make_config, tmp_path, override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        run(make_config(*COMMON, "method.target_density=0.1", override, output_dir=tmp_path / "bad"))


def test_pruned_weights_stay_zero_between_events(make_config) -> None:
    from consparse.config import instantiate_node
    from consparse.methods import build_method
    from consparse.models import build_model

    cfg = make_config("method=gmp", "method.target_density=0.3")
    info = instantiate_node(cfg.dataset).info
    method = build_method(cfg.method, build_model(cfg.model, info), info)
    method.pruning_schedule = CubicSchedule(start=0, end=4, every=2, initial=0.6, final=0.3)
    method.on_train_batch_start(None, 0)
    pruned = {name: w == 0 for name, w in sparsifiable_weights(method.model).items()}
    with torch.no_grad():
        for weight in sparsifiable_weights(method.model).values():
            weight.add_(1.0)
    method.on_train_batch_end(None, None, 0)
    assert all(bool((w[pruned[name]] == 0).all()) for name, w in sparsifiable_weights(method.model).items())
    kept = sum(int((w != 0).sum()) for w in sparsifiable_weights(method.model).values())
    total = sum(w.numel() for w in sparsifiable_weights(method.model).values())
    assert kept / total == pytest.approx(0.6, abs=1e-3)
