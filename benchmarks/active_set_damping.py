"""The active set with and without its damping of stalled rows, on the rows a run refits.

The problem is the one ``method=implicit_lasso`` solves for a composed config (any dataset and
model it supports): the teacher ``--teacher`` converted, its states on ``method.data_fraction`` of
the training split, every row of every block (or the rows ``--rows`` names), all constrained to
``kappa``. The solver runs twice
from cold on the same rows, in one process:

* damped: the default settings (a row that stops making progress has its growth damped);
* undamped: ``stall_rounds`` never reached and ``max_rounds`` 100, the solver as it was before the
  damping: a cycling row runs its 100 rounds and is then solved on the exact path.

Prints each variant's seconds, rounds per row, fallback rows, the ratio undamped / damped and the
largest difference between the two solutions (both are the optimum; rows the undamped variant
hands to the path differ by the path's rounding, larger where the design is nearly singular). Run
it alone on the machine, e.g. on a 20 Newsgroups teacher trained at the x3 learning rate (the
rows of its second layer cycle):

    python benchmarks/active_set_damping.py --teacher <run dir>/checkpoints/last.ckpt --rows 512:768 \\
        experiment=compare_newsgroups20_text_mlp dataset.root=../shared/data method=implicit_lasso
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from consparse.config import instantiate_node
from consparse.methods.implicit_lasso import load_teacher
from consparse.methods.implicit_lasso.method import FORMULATION_CLASSES
from consparse.methods.implicit_lasso.refit import RowSolver
from consparse.methods.registry import build_method
from consparse.models.registry import build_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the trained model: checkpoint, run dir or state_dict file")
    parser.add_argument("--kappa", type=float, default=None, help="the radius (default: the config's method.kappa)")
    parser.add_argument("--rows", default=None, help="START:STOP, only these rows of every block (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="train.py overrides composing the run (method=implicit_lasso ...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    datamodule = instantiate_node(cfg.dataset, "dataset")
    method = build_method(cfg.method, build_model(cfg.model, datamodule.info), datamodule.info)
    teacher = method.model
    load_teacher(teacher, args.teacher)
    teacher.eval()
    datamodule.setup()
    samples = max(1, math.ceil(method.data_fraction * len(datamodule.train_eval_set)))
    loader = datamodule.train_eval_dataloader(samples, method.extraction_batch_size)
    matcher = FORMULATION_CLASSES[method.formulation](
        teacher, loader, datamodule.info.input_shape, method.matching, torch.device("cpu"))
    kappa = method.kappa if args.kappa is None else args.kappa
    rows = slice(None) if args.rows is None else slice(*(int(end) for end in args.rows.split(":")))
    blocks = [replace(block, problem=block.problem.select(rows)) for block in matcher.blocks]
    radii = [radius[rows] for radius in matcher.radii(kappa)]
    print(f"problem: {sum(b.problem.rows for b in blocks)} rows in {len(blocks)} block(s), "
          f"d = {[b.problem.features for b in blocks]}, m = {matcher.samples} samples, kappa = {kappa}, "
          f"{args.threads} thread(s)")

    damped = method.solver_settings
    variants = {"damped": damped, "undamped": replace(damped, stall_rounds=10**9, max_rounds=100)}
    seconds, solutions = {}, {}
    for name, settings in variants.items():
        solver = RowSolver(blocks, method.row_batch, settings)
        start = time.perf_counter()
        solutions[name] = solver.solve(radii)
        seconds[name] = time.perf_counter() - start
        rounds = torch.cat([s.steps for s in solutions[name]]).float()
        fallback = sum(int(s.fallback.sum()) for s in solutions[name])
        print(f"{name:9s}: {seconds[name]:8.1f} s   rounds per row {rounds.mean():.1f} (max {int(rounds.max())})   "
              f"fallback rows {fallback}", flush=True)
    difference = max(float((a.weights - b.weights).abs().max()) for a, b in zip(solutions["damped"], solutions["undamped"]))
    print(f"ratio undamped / damped: {seconds['undamped'] / seconds['damped']:.1f}x   "
          f"largest weight difference {difference:.1e}")


if __name__ == "__main__":
    main()
