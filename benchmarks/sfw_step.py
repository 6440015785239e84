"""SFW training-step time against an SGD (momentum) step on the same model and batch, in one run.

A step is forward + backward + optimiser step. SGD and each SFW configuration (constraint sets
built by ``consparse.optim.constraints.build_model_constraints`` exactly as ``method=sfw`` builds
them) alternate over several rounds, so that machine load affects all of them alike; medians are
compared. Prints the median step time, the optimiser-step share and the ratio SFW / SGD (goal:
<= 1.2).

    python benchmarks/sfw_step.py --models lenet5 resnet18 --threads 1 --rounds 5 --steps 4

Run it on an otherwise idle machine (timings of both optimisers suffer alike from load, but not
equally: the optimiser step is memory-bound, the convolutions compute-bound).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from consparse.models.lenet import LeNet5
from consparse.models.resnet import resnet18
from consparse.optim import FrankWolfe
from consparse.optim.constraints import ConstraintSpec, build_model_constraints

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (builder, input shape, default batch)
    "lenet5": (lambda: LeNet5([1, 28, 28], 10), (1, 28, 28), 128),
    "resnet18": (lambda: resnet18([3, 32, 32], 10, stem="cifar"), (3, 32, 32), 32),
}

# SFW configurations: the default (k-support, k = 10 %) and the structured sets.
SFW_CONFIGS: dict[str, dict] = {
    "sfw ksupport": {"kind": "ksupport", "k": 0.1},
    "sfw ksparse": {"kind": "ksparse", "k": 0.1},
    "sfw group_ksupport": {"kind": "group_ksupport", "k": 0.3},
    "sfw spectral_ksupport": {"kind": "spectral_ksupport", "k": 0.3},
}


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    groups = build_model_constraints(model, ConstraintSpec(**SFW_CONFIGS[name]))
    return FrankWolfe([g.as_param_group() for g in groups], lr=0.1, momentum=0.9)


def time_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> tuple[float, float]:
    """Mean seconds per full step and per optimiser step over ``steps`` steps."""
    total = step_only = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        before_step = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        total += end - start
        step_only += end - before_step
    return total / steps, step_only / steps


def benchmark(model_name: str, batch: int | None, steps: int, rounds: int, configs: list[str]) -> None:
    builder, shape, default_batch = MODELS[model_name]
    batch = batch or default_batch
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *shape), generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    names = ["sgd", *configs]
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    for name in names:
        torch.manual_seed(0)
        model = builder().train()
        runs[name] = (model, make_optimizer(name, model))
        time_steps(model, runs[name][1], x, y, 2)  # warm-up (allocations, the partial SVD's cold start)
    totals: dict[str, list[float]] = {name: [] for name in names}
    steps_only: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            total, step_only = time_steps(*runs[name], x, y, steps)
            totals[name].append(total)
            steps_only[name].append(step_only)
    baseline = statistics.median(totals["sgd"])
    print(
        f"\n{model_name}: batch {batch}, {rounds} rounds x {steps} steps, {torch.get_num_threads()} thread(s)"
    )
    print(f"  {'optimizer':<24}{'ms / step':>11}{'of which step':>15}{'ratio vs SGD':>14}")
    for name in names:
        median = statistics.median(totals[name])
        print(
            f"  {name:<24}{1e3 * median:>11.1f}{1e3 * statistics.median(steps_only[name]):>15.1f}{median / baseline:>14.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--configs", nargs="+", default=list(SFW_CONFIGS), choices=list(SFW_CONFIGS))
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size (default: 128 lenet5, 32 resnet18)"
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are compared")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model_name in args.models:
        benchmark(model_name, args.batch, args.steps, args.rounds, args.configs)


if __name__ == "__main__":
    main()
