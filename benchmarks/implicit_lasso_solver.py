"""The batched constrained-LASSO solver against scikit-learn row by row, on the MNIST-mlp problem.

The problem is the one ``method=implicit_lasso`` solves: a trained mlp 784-300-100-10 (a teacher
checkpoint) converted exactly to an implicit model, its states on ``--fraction`` of the MNIST
training images, and the 400 rows of ``[A B]`` (d = 400 + 785 columns) constrained to
``||w||_1 <= kappa``. Both solvers reach the same tolerance on the radius (``eps``: the paper's
bisection stops within ``eps * kappa`` on the feasible side; ours ends on the sphere):

* baseline: for each row, bisection on the penalty with scikit-learn's coordinate descent
  (``enet_path`` with the precomputed Gram matrix, warm starts, duality-gap ``--tol``), as
  ``tests.lasso.reference`` does; timed on every ``--stride``-th row and scaled to all rows;
* ours: ``RowSolver`` over all rows (chunks of ``--row-batch``), for each ``--steps`` variant
  (``active_set``, the default, and the path's ``path``, ``newton``, ``bisect``);
* with ``--warm-start``: the paper's bisection (``step: bisect``) on the baseline's rows, each
  penalised solve warm-started from the previous one against started from ``lam_max`` (the effect
  of warm starts the paper reports as 1.7-2.2x).

Prints the seconds, the ratio baseline / ours, and the largest relative objective difference on
the baseline's rows (ours minus baseline, relative to the baseline's loss; goal: within 1e-3).
Run it alone on the machine (no other job on the cores), e.g.

    python benchmarks/implicit_lasso_solver.py --stride 20 --steps active_set path \
        --teacher outputs/implicit_lasso/mnist_k0.05_teacher/checkpoints/last.ckpt --kappa 0.05
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from consparse.data.mnist import MNISTDataModule
from consparse.lasso.solvers import solver_settings
from consparse.methods.implicit_lasso import load_teacher
from consparse.methods.implicit_lasso.matching import MatchingSettings
from consparse.methods.implicit_lasso.refit import RowBlock, RowSolver
from consparse.methods.implicit_lasso.state_matching import ImplicitStateMatching
from consparse.models.mlp import MLP

# The independent scikit-learn reference lives with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.lasso.reference import sklearn_constrained_lasso


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a trained mlp: checkpoint, run dir or state_dict file")
    parser.add_argument("--root", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of the training images (method.data_fraction)")
    parser.add_argument("--kappa", type=float, default=0.05)
    parser.add_argument("--eps", type=float, default=1e-3, help="bisection tolerance on the radius (both solvers)")
    parser.add_argument("--tol", type=float, default=1e-6, help="scikit-learn duality-gap tolerance (relative to ||z||^2)")
    parser.add_argument("--stride", type=int, default=4, help="the baseline solves every stride-th row")
    parser.add_argument("--row-batch", type=int, default=128)
    parser.add_argument("--steps", nargs="*", default=["active_set", "path", "newton", "bisect"], help="variants timed on all rows (none: only the baseline and --warm-start)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warm-start", action="store_true", help="also time the bisection with and without warm starts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = MNISTDataModule(root=args.root)
    data.setup()
    teacher = MLP([1, 28, 28], 10)
    load_teacher(teacher, args.teacher)
    teacher.eval()
    loader = data.train_eval_dataloader(math.ceil(args.fraction * len(data.train_eval_set)), 500)
    matcher = ImplicitStateMatching(teacher, loader, [1, 28, 28], MatchingSettings(), torch.device("cpu"))
    problem = matcher.blocks[0].problem
    print(f"problem: {problem.rows} rows, d = {problem.features}, m = {matcher.samples} samples, kappa = {args.kappa}, "
          f"eps = {args.eps}, {args.threads} thread(s)")

    rows = list(range(0, problem.rows, args.stride))
    start = time.perf_counter()
    reference = sklearn_constrained_lasso(problem, args.kappa, eps=args.eps, tol=args.tol, rows=rows)
    baseline = (time.perf_counter() - start) * problem.rows / len(rows)
    reference_loss = problem.select(torch.tensor(rows)).loss(reference.weights)
    print(f"scikit-learn CD + bisection, row by row: {baseline:.1f} s for all rows "
          f"(measured on {len(rows)} rows, {reference.steps.float().mean():.1f} solves per row)")

    for step in args.steps:
        solver = RowSolver(matcher.blocks, args.row_batch, solver_settings({"step": step, "eps": args.eps}))
        start = time.perf_counter()
        solution = solver.solve([torch.full((problem.rows,), args.kappa, dtype=torch.float64)])[0]
        ours = time.perf_counter() - start
        difference = float(((solution.loss[rows] - reference_loss) / reference_loss.clamp_min(1e-300)).max())
        print(f"batched ({step:6s}): {ours:7.1f} s   ratio {baseline / ours:5.1f}x   "
              f"max relative objective difference {difference:+.1e}   knots {int(solution.knots.sum())}   "
              f"rounds/solves per row {solution.steps.float().mean():.1f}   fallback rows {int(solution.fallback.sum())}   "
              f"max ||w||_1 / kappa {float(solution.norm.max()) / args.kappa:.6f}")

    if args.warm_start:
        subset = [RowBlock(matcher.blocks[0].name, problem.select(torch.tensor(rows)))]
        radius = [torch.full((len(rows),), args.kappa, dtype=torch.float64)]
        timings = {}
        for warm in (True, False):
            solver = RowSolver(subset, args.row_batch, solver_settings({"step": "bisect", "eps": args.eps, "warm_start": warm}))
            start = time.perf_counter()
            solution = solver.solve(radius)[0]
            timings[warm] = time.perf_counter() - start
            print(f"bisect, warm start {warm!s:5s} on the {len(rows)} rows: {timings[warm]:6.1f} s   "
                  f"knots {int(solution.knots.sum())}   solves per row {solution.steps.float().mean():.1f}")
        print(f"warm start speed-up: {timings[False] / timings[True]:.1f}x")


if __name__ == "__main__":
    main()
