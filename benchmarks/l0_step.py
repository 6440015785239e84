"""Constrained-L0 training-step time against a dense step on the same model and batch, in one run.

A step is what Lightning runs per batch: the method's ``training_step`` (forward, cross-entropy,
and for l0 the expected densities and the Lagrangian term) + backward + ``optimizer_step`` (Adam;
for l0 also the dual step and the clamping of the gates). ``method=dense`` and ``method=l0``
(structured gates, model-wise target) are built with the platform's own constructors and
alternate over several rounds so that machine load affects both alike; medians are compared.
Prints the median step times and the ratio l0 / dense (goal: <= 1.25).

    OMP_NUM_THREADS=1 python benchmarks/l0_step.py --models lenet5 resnet18 --threads 1
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from consparse.data.info import DatasetInfo
from consparse.methods.base import SparseMethod
from consparse.methods.dense import DenseMethod
from consparse.methods.l0 import L0Method
from consparse.models.lenet import LeNet5
from consparse.models.resnet import resnet18

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (builder, input shape, default batch)
    "lenet5": (lambda: LeNet5([1, 28, 28], 10), (1, 28, 28), 128),
    "resnet18": (lambda: resnet18([3, 32, 32], 10, stem="cifar"), (3, 32, 32), 32),
}


def build(method: str, model: str) -> tuple[SparseMethod, torch.optim.Optimizer]:
    builder, shape, _ = MODELS[model]
    info = DatasetInfo(model, shape, 10, "image")
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    torch.manual_seed(0)
    if method == "dense":
        built: SparseMethod = DenseMethod(builder(), info, optimizer=adam)
    else:
        built = L0Method(builder(), info, target_density=0.5, optimizer=adam, gates_lr=0.05, dual_lr=0.1)
    # Outside a Trainer there is nothing to log to; logging is not what is timed.
    built.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return built.train(), adam(built.parameter_groups())


def time_steps(method: SparseMethod, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor],
               steps: int) -> float:
    """Mean seconds per step over ``steps`` steps."""

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = method.training_step(batch, 0)
        loss.backward()
        return loss

    start = time.perf_counter()
    for index in range(steps):
        method.optimizer_step(0, index, optimizer, closure)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and method")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} rounds={args.rounds} steps/round={args.steps} torch={torch.__version__}")
    for model in args.models:
        _, shape, batch_size = MODELS[model]
        generator = torch.Generator().manual_seed(0)
        batch = (torch.randn(batch_size, *shape, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator))
        runs = {name: build(name, model) for name in ("dense", "l0")}
        for method, optimizer in runs.values():
            time_steps(method, optimizer, batch, 2)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (method, optimizer) in runs.items():
                times[name].append(time_steps(method, optimizer, batch, args.steps))
        dense, l0 = statistics.median(times["dense"]), statistics.median(times["l0"])
        print(f"{model:9s} batch {batch_size:4d}  dense {dense * 1e3:8.2f} ms  l0 {l0 * 1e3:8.2f} ms  "
              f"ratio l0/dense {l0 / dense:5.2f}  (goal <= 1.25)")


if __name__ == "__main__":
    main()
