"""implicit_fw training-step time against the dense projected-gradient implicit model, in one run.

A step is forward (fixed point) + implicit backward (adjoint fixed point) + the method's update:
Adam then the row-wise L1 projection of A for ``implicit_pgd``; the Frank-Wolfe step with its
capacity bookkeeping for ``implicit_fw`` (and, for the short step, its extra loss evaluations).
Both methods are built from their configs (``conf/method/*.yaml`` via Hydra, as ``train.py`` builds
them) around the same implicit model (same n, kappa, batch and solver tolerances), on the same
MNIST batches. The cost of a step depends on the weights (fixed-point iterations grow with
``||A||_inf``), so every variant first trains ``--warmup`` steps and is then timed; variants alternate
over ``--rounds`` so that machine load affects all alike, and medians are compared.

    python benchmarks/implicit_fw_step.py --state-size 300 --batch 128 --warmup 200 --rounds 5 --steps 10

Prints ms per step, mean forward / backward fixed-point iterations and the ratio to implicit_pgd.
Run it on an otherwise idle machine (nothing else on the CPU); ``--data-root`` defaults to ``../shared/data``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from consparse.config import instantiate_node
from consparse.methods import build_method
from consparse.methods.base import SparseMethod
from consparse.models import build_model

CONF = Path(__file__).resolve().parents[1] / "conf"
VARIANTS: dict[str, tuple[str, ...]] = {
    "implicit_pgd (Adam + projection)": ("method=implicit_pgd",),
    "implicit_fw (default: ksparse rows, lr rule)": ("method=implicit_fw",),
    "implicit_fw short step": ("method=implicit_fw", "method.optimizer.step_rule=short"),
    "implicit_fw l1 rows, pairwise": (
        "method=implicit_fw", "method.optimizer.direction=pairwise",
        *(f"method.constraints.{m}.kind=l1" for m in "BCD"), *(f"method.constraints.{m}.k=null" for m in "BCD"),
        "method.constraints.B.radius=20", "method.constraints.C.radius=20", "method.constraints.D.radius=5",
    ),
}


class Runner:
    """One variant: its method, optimiser and the update it takes after backward."""

    def __init__(self, overrides: tuple[str, ...], common: list[str]) -> None:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*common, *overrides])
        self.datamodule = instantiate_node(cfg.dataset)
        info = self.datamodule.info
        torch.manual_seed(0)
        self.method: SparseMethod = build_method(cfg.method, build_model(cfg.model, info), info)
        self.optimizer = self.method.optimizer_factory(self.method.parameter_groups())
        self.forward_iterations: list[float] = []
        self.backward_iterations: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        method, optimizer = self.method, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        method.training_step((x, y), 0).backward()
        record = method.implicit.last_solve
        method.on_before_optimizer_step(optimizer)
        if hasattr(method, "batch_loss"):  # implicit_fw's optimizer_step, without Lightning's wrapper
            optimizer.step(evaluate=method.batch_loss)
        else:  # implicit_pgd's optimizer_step
            optimizer.step()
            method.implicit.project_()
        self.forward_iterations.append(record.forward.mean_iterations)
        self.backward_iterations.append(record.backward.mean_iterations)


def timed(runner: Runner, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    start = time.perf_counter()
    for x, y in batches:
        runner.step(x, y)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(CONF.parents[1] / "shared" / "data"))
    parser.add_argument("--state-size", type=int, default=300)
    parser.add_argument("--kappa", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=200, help="training steps before timing")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = [
        "model=implicit", "dataset=mnist", f"dataset.root={args.data_root}", f"dataset.batch_size={args.batch}",
        f"model.state_size={args.state_size}", f"model.kappa={args.kappa}", "method.scheduler=null",
    ]
    runners = {name: Runner(overrides, common) for name, overrides in VARIANTS.items()}
    datamodule = next(iter(runners.values())).datamodule
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    data = [next(loader) for _ in range(args.warmup + args.steps)]
    warm, timed_batches = data[: args.warmup], data[args.warmup :]
    for runner in runners.values():
        for x, y in warm:
            runner.step(x, y)
        runner.forward_iterations.clear()
        runner.backward_iterations.clear()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            # The same batches every round: each variant keeps training, so it is timed in its own state.
            seconds[name].append(timed(runner, timed_batches))
    baseline = statistics.median(seconds["implicit_pgd (Adam + projection)"])
    print(
        f"\nimplicit model n={args.state_size}, kappa={args.kappa}, batch {args.batch}, {args.warmup} warm-up steps, "
        f"{args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} thread(s)"
    )
    print(f"  {'variant':<46}{'ms / step':>10}{'fwd its':>9}{'bwd its':>9}{'density':>9}{'ratio':>7}")
    for name, runner in runners.items():
        median = statistics.median(seconds[name])
        density = runner.method.density()
        print(
            f"  {name:<46}{1e3 * median:>10.1f}{statistics.mean(runner.forward_iterations):>9.1f}"
            f"{statistics.mean(runner.backward_iterations):>9.1f}{density:>9.3f}{median / baseline:>7.2f}"
        )


if __name__ == "__main__":
    main()
