"""CPU latency measurement."""

from __future__ import annotations

import pytest
import torch

from consparse.compress.latency import measure_latency
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
    with pytest.raises(ConfigError, match="evaluation.latency.threads"):
        measure_latency(small_mlp, [12], threads=0)
    with pytest.raises(ConfigError, match="evaluation.latency.min_run_time"):
        measure_latency(small_mlp, [12], min_run_time=0)
