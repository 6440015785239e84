"""CPU latency of a model at a fixed thread count and batch size.

Measured with ``torch.utils.benchmark.Timer.blocked_autorange`` (median of timed blocks, eval mode,
``torch.inference_mode``), on a CPU copy of the model so the input model is not touched. On a
shared machine expect about 20% noise; the result records everything needed to compare runs.
"""

from __future__ import annotations

import copy
import platform
import statistics
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from consparse.validation import check_int, check_range


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else what ``platform`` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 3,
    min_run_time: float = 0.5,
) -> dict[str, Any]:
    """Median milliseconds per forward pass of a batch of random inputs of ``input_shape``.

    Returns ``ms`` (median per batch), ``iqr_ms``, ``threads``, ``batch_size``, ``repeats`` (timed
    forward passes in total), ``warmup``, ``min_run_time``, ``torch_version`` and ``cpu``.
    ``min_run_time`` (seconds) bounds the timed budget; the warmup passes come on top.
    """
    check_int("evaluation.latency.batch_size", batch_size, 1)
    check_int("evaluation.latency.threads", threads, 1)
    check_int("evaluation.latency.warmup", warmup, 0)
    check_range("evaluation.latency.min_run_time", min_run_time, 0.0, low_inclusive=False)
    timed = copy.deepcopy(model).cpu().eval()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch_size, *[int(d) for d in input_shape], generator=generator)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # The Timer runs its statement in this thread, so the inference mode set here applies.
        with torch.inference_mode():
            for _ in range(warmup):
                timed(inputs)
            timer = benchmark.Timer(
                stmt="model(inputs)", globals={"model": timed, "inputs": inputs}, num_threads=threads
            )
            measurement = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "ms": measurement.median * 1e3,
        "iqr_ms": measurement.iqr * 1e3,
        "threads": threads,
        "batch_size": batch_size,
        "repeats": len(measurement.times) * measurement.number_per_run,
        "warmup": warmup,
        "min_run_time": min_run_time,
        "torch_version": torch.__version__,
        "cpu": cpu_name(),
    }


def compare_latency(
    models: dict[str, nn.Module], input_shape: Sequence[int], rounds: int = 3, **settings: Any
) -> dict[str, dict[str, Any]]:
    """``measure_latency`` of several models, interleaved over ``rounds`` so that drifting machine load
    affects them alike; each model's ``ms`` is the median of its per-round medians.

    The same module object given under two names is measured once.
    """
    check_int("evaluation.latency.rounds", rounds, 1)
    unique: dict[int, str] = {}
    for name, model in models.items():
        unique.setdefault(id(model), name)
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in unique.values()}
    for _ in range(rounds):
        for name in per_round:
            per_round[name].append(measure_latency(models[name], input_shape, **settings))
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in per_round.items():
        summary[name] = {**runs[-1], "ms": statistics.median(run["ms"] for run in runs), "rounds": rounds,
                         "repeats": sum(run["repeats"] for run in runs)}
    return {name: summary[unique[id(model)]] for name, model in models.items()}
