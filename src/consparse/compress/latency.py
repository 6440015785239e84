"""CPU latency of a model at a fixed thread count and batch size, within a time budget.

Forward passes of random inputs run in eval mode under ``torch.inference_mode`` on a CPU copy of the
model (the input model is not touched). Passes are timed in blocks of about ``BLOCK_SECONDS`` so
that the clock's own cost stays negligible for tiny models; the result is the median over blocks of
the per-pass time. On a shared machine expect about 20% noise; the result records everything
needed to compare runs.

How long it takes is bounded: a measurement times passes for ``min_run_time`` seconds, but never
for longer than its share of ``budget_s`` (the budget of a whole ``compare_latency`` call, warmup
included), except that it always runs its ``warmup`` passes and at least ``min_repeats`` timed
passes. A model slower than its share is thus timed ``min_repeats`` times rather than not at all.
"""

from __future__ import annotations

import copy
import functools
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from consparse.validation import check_int, check_range

# Seconds of forward passes per timed block: the clock's ~0.1 us per reading is then below 0.01 %.
BLOCK_SECONDS = 1e-3
# The fewest timed passes per measurement, whatever the budget.
MIN_REPEATS = 5


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else what ``platform`` knows)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _check_settings(batch_size: int, threads: int, warmup: int, min_run_time: float, min_repeats: int) -> None:
    check_int("batch_size", batch_size, 1)
    check_int("threads", threads, 1)
    check_int("warmup", warmup, 0)
    check_range("min_run_time", min_run_time, 0.0, low_inclusive=False)
    check_int("min_repeats", min_repeats, 1)


def _seconds_per_pass(forward: Callable[[], Any], passes: int) -> float:
    start = time.perf_counter()
    for _ in range(passes):
        forward()
    return (time.perf_counter() - start) / passes


def _time_passes(
    forward: Callable[[], Any], warmup: int, run_time: float, allowance: float, min_repeats: int
) -> tuple[list[float], int]:
    """Per-pass seconds of each timed block and the number of timed passes.

    Times passes until they add up to ``min(run_time, what is left of allowance after the
    warmup)`` seconds, and at least ``min_repeats`` of them. The first timed pass, on its own,
    sets the block size.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        forward()
    target = min(run_time, allowance - (time.perf_counter() - start))
    first = _seconds_per_pass(forward, 1)
    blocks, repeats, timed = [first], 1, first
    block = max(1, math.ceil(BLOCK_SECONDS / max(first, 1e-9)))
    while repeats < min_repeats or timed < target:
        passes = block if repeats >= min_repeats else min(block, min_repeats - repeats)
        seconds = _seconds_per_pass(forward, passes)
        blocks.append(seconds)
        repeats += passes
        timed += seconds * passes
    return blocks, repeats


def _measurement(blocks: list[float], repeats: int, **conditions: Any) -> dict[str, Any]:
    quartiles = statistics.quantiles(blocks, n=4) if len(blocks) > 1 else [blocks[0]] * 3
    return {
        "ms": statistics.median(blocks) * 1e3,
        "iqr_ms": (quartiles[2] - quartiles[0]) * 1e3,
        **conditions,
        "repeats": repeats,
        "torch_version": torch.__version__,
        "cpu": cpu_name(),
    }


def _inputs(input_shape: Sequence[int], batch_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, *[int(d) for d in input_shape], generator=generator)


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 3,
    min_run_time: float = 0.5,
    min_repeats: int = MIN_REPEATS,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Median milliseconds per forward pass of a batch of random inputs of ``input_shape``.

    Returns ``ms`` (median per batch), ``iqr_ms`` (over timed blocks), ``threads``, ``batch_size``,
    ``repeats`` (timed forward passes), ``warmup``, ``min_run_time``, ``min_repeats``,
    ``torch_version`` and ``cpu``. ``min_run_time`` (seconds) is how long passes are timed;
    ``budget_s`` caps the whole measurement, warmup included (see the module docstring).
    """
    return compare_latency(
        {"model": model}, input_shape, rounds=1, budget_s=budget_s, batch_size=batch_size, threads=threads,
        warmup=warmup, min_run_time=min_run_time, min_repeats=min_repeats,
    )["model"]


def compare_latency(
    models: dict[str, nn.Module],
    input_shape: Sequence[int],
    rounds: int = 3,
    budget_s: float | None = None,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 3,
    min_run_time: float = 0.5,
    min_repeats: int = MIN_REPEATS,
) -> dict[str, dict[str, Any]]:
    """Latency of several models, measured alternately over ``rounds`` so that drifting machine load
    affects them alike; each model's ``ms`` is the median of its per-round medians.

    ``budget_s`` (None: unbounded) is shared equally by every measurement (models x rounds); each
    also respects ``min_run_time``, ``warmup`` and ``min_repeats`` as ``measure_latency`` does.
    The same module object given under two names is measured once.
    """
    _check_settings(batch_size, threads, warmup, min_run_time, min_repeats)
    check_int("rounds", rounds, 1)
    if budget_s is not None:
        check_range("budget_s", budget_s, 0.0, low_inclusive=False)
    unique: dict[int, str] = {}
    for name, model in models.items():
        unique.setdefault(id(model), name)
    timed = {name: copy.deepcopy(models[name]).cpu().eval() for name in unique.values()}
    inputs = _inputs(input_shape, batch_size)
    allowance = math.inf if budget_s is None else budget_s / (rounds * len(timed))
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in timed}
    conditions = {"threads": threads, "batch_size": batch_size, "warmup": warmup,
                  "min_run_time": min_run_time, "min_repeats": min_repeats, "budget_s": budget_s}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for name, model in timed.items():
                    forward = functools.partial(model, inputs)
                    blocks, repeats = _time_passes(forward, warmup, min_run_time, allowance, min_repeats)
                    per_round[name].append(_measurement(blocks, repeats, **conditions))
    finally:
        torch.set_num_threads(previous_threads)
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in per_round.items():
        summary[name] = {**runs[-1], "ms": statistics.median(run["ms"] for run in runs), "rounds": rounds,
                         "repeats": sum(run["repeats"] for run in runs)}
    return {name: summary[unique[id(model)]] for name, model in models.items()}
