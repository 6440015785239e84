"""CPU latency measurement."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from consparse.compress.latency import compare_latency, measure_latency
from consparse.errors import ConfigError
from consparse.models.mlp import MLP


@pytest.mark.parametrize("threads", [1, 2])
def test_latency_is_positive_and_records_its_conditions(small_mlp: MLP, watch, threads: int) -> None:
    small_mlp.train()
    check = watch(small_mlp)
    before = torch.get_num_threads()
    result = measure_latency(small_mlp, [12], batch_size=4, threads=threads, warmup=1, min_run_time=0.05)
    assert result["ms"] > 0
    assert result["threads"] == threads and result["batch_size"] == 4
    assert result["repeats"] >= 1
    assert result["torch_version"] == torch.__version__ and result["cpu"]
    assert torch.get_num_threads() == before
    check()


def test_bad_settings_are_config_errors(small_mlp: MLP) -> None:
    with pytest.raises(ConfigError, match="^threads"):
        measure_latency(small_mlp, [12], threads=0)
    with pytest.raises(ConfigError, match="^min_run_time"):
        measure_latency(small_mlp, [12], min_run_time=0)


class _SlowCounted(nn.Module):
    """A model whose every forward pass takes at least ``seconds`` and is counted."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def __deepcopy__(self, memo: dict) -> _SlowCounted:
        return self  # the timed copy is this module, so its calls are counted here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_a_tight_budget_times_each_model_the_documented_minimum() -> None:
    deployed, dense = _SlowCounted(0.002), _SlowCounted(0.002)
    # Each of the 4 measurements may spend 0.1 ms: less than its warmup, so only the minimum runs.
    result = compare_latency({"deployed": deployed, "dense": dense}, [3], rounds=2, budget_s=4e-4,
                             warmup=1, min_run_time=10.0, min_repeats=3)
    assert deployed.calls == dense.calls == 2 * (1 + 3)
    assert result["deployed"]["repeats"] == result["dense"]["repeats"] == 2 * 3
    assert result["deployed"]["budget_s"] == 4e-4 and result["deployed"]["rounds"] == 2


def test_the_budget_bounds_the_number_of_passes() -> None:
    # A pass takes >= 5 ms, so a 25 ms share of the budget holds at most 5 passes, warmup included;
    # min_run_time alone would ask for 200.
    deployed, dense = _SlowCounted(0.005), _SlowCounted(0.005)
    budget, rounds, warmup, min_repeats = 0.1, 2, 1, 2
    compare_latency({"deployed": deployed, "dense": dense}, [3], rounds=rounds, budget_s=budget,
                    warmup=warmup, min_run_time=1.0, min_repeats=min_repeats)
    share_passes = budget / (rounds * 2) / 0.005
    assert deployed.calls <= rounds * (warmup + max(min_repeats, share_passes))
    assert dense.calls <= rounds * (warmup + max(min_repeats, share_passes))
    assert deployed.calls >= rounds * (warmup + min_repeats)


def test_without_a_budget_min_run_time_sets_the_timed_passes() -> None:
    model = _SlowCounted(0.002)
    result = measure_latency(model, [3], warmup=0, min_run_time=0.02, min_repeats=1)
    # min_run_time / per-pass cost, the cost being >= 2 ms: at most 10 passes, at least the minimum.
    assert 1 <= result["repeats"] == model.calls <= 10


def test_the_same_model_under_two_names_is_timed_once() -> None:
    model = _SlowCounted(0.0)
    result = compare_latency({"deployed": model, "dense": model}, [3], rounds=1, budget_s=0.01,
                             warmup=2, min_run_time=0.001, min_repeats=3)
    assert result["deployed"] == result["dense"]
    assert model.calls == 2 + result["deployed"]["repeats"]


def test_bad_budget_settings_are_config_errors(small_mlp: MLP) -> None:
    with pytest.raises(ConfigError, match="^budget_s"):
        compare_latency({"m": small_mlp}, [12], budget_s=0)
    with pytest.raises(ConfigError, match="^min_repeats"):
        compare_latency({"m": small_mlp}, [12], min_repeats=0)
