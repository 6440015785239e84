"""Share of a 1-epoch run's wall time spent evaluating the deployed model after training.

Runs ``python train.py <job> trainer.max_epochs=1`` as a user does (a fresh process: imports,
data, fit, evaluation, results) for the default job and for the design card's
``method=sfw model=resnet18``, times each process, and reads from its results.json how long each
phase took. The evaluation is the phases after training that measure the deployed model (test
accuracy, model stats, latency, compression curve, export, method metrics); the goal is an
evaluation share of at most 25 % of the wall time. Jobs run alternately over ``--repeats`` so that
machine load affects them alike; the medians are printed.

    OMP_NUM_THREADS=1 python benchmarks/evaluation_share.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from consparse.timing import EVALUATION_PHASES, evaluation_seconds

REPO = Path(__file__).resolve().parents[1]
JOBS = {
    "default job": [],
    "method=sfw model=resnet18": ["method=sfw", "model=resnet18"],
}
GOAL = 0.25


def run_job(overrides: list[str], extra: list[str], run_dir: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``train.py`` process and the phase seconds it recorded."""
    command = [sys.executable, str(REPO / "train.py"), *overrides, "trainer.max_epochs=1",
               "trainer.enable_progress_bar=false", *extra, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return wall, results["phase_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("extra", nargs="*", help="overrides added to every job (e.g. evaluation=quick)")
    args = parser.parse_args()

    walls: dict[str, list[float]] = {name: [] for name in JOBS}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in JOBS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for index, (name, overrides) in enumerate(JOBS.items()):
                wall, phase_seconds = run_job(overrides, args.extra, Path(tmp) / f"{repeat}-{index}")
                walls[name].append(wall)
                phases[name].append(phase_seconds)

    print(f"repeats={args.repeats} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"extra={' '.join(args.extra) or '-'}")
    print("| job | wall s | fit s | evaluation s | evaluation / wall | " + " | ".join(EVALUATION_PHASES) + " |")
    print("|---|---|---|---|---|" + "---|" * len(EVALUATION_PHASES))
    for name in JOBS:
        wall = statistics.median(walls[name])
        evaluation = statistics.median(evaluation_seconds(p) for p in phases[name])
        fit = statistics.median(p.get("fit", 0.0) for p in phases[name])
        details = [statistics.median(p.get(phase, 0.0) for p in phases[name]) for phase in EVALUATION_PHASES]
        share = statistics.median(evaluation_seconds(p) / w for p, w in zip(phases[name], walls[name]))
        verdict = "ok" if share <= GOAL else f"above the {GOAL:.0%} goal"
        print(f"| {name} | {wall:.1f} | {fit:.1f} | {evaluation:.1f} | {share:.1%} ({verdict}) | "
              + " | ".join(f"{d:.2f}" for d in details) + " |")


if __name__ == "__main__":
    main()
