"""Latency of a purged LeNet-5 against the dense LeNet-5, measured in one run.

The purged model is either the one a run exported (``--run-dir``: ``train.py`` writes the purged
model of ``method=l0`` to ``<run dir>/export``) or, by default, the purge of a gated LeNet-5 whose
test gates keep the fractions given by ``--keep`` (conv1 channels, conv2 channels, fc1 inputs,
fc2 inputs; the defaults give about the paper's 2.35 % of the parameters). Latency is
``consparse.compress.latency.measure_latency`` (median over timed blocks) at each batch size.
Prints params and latency of both and the speed-up (goal: >= 3x at <= 5 % params).

    OMP_NUM_THREADS=1 python benchmarks/l0_purged_latency.py --batch-sizes 1 64
    OMP_NUM_THREADS=1 python benchmarks/l0_purged_latency.py --run-dir outputs/runs/<date>/<time>
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from consparse.compress.count import count_params
from consparse.compress.export import load_exported
from consparse.compress.latency import measure_latency
from consparse.gates import gate_model, gated_layers, purge
from consparse.models.lenet import LeNet5

INPUT_SHAPE = (1, 28, 28)


def synthetic_purge(keep: list[float]) -> nn.Module:
    """Purge of a gated LeNet-5 whose gates keep the first ``keep[i]`` fraction of each gated layer's groups."""
    torch.manual_seed(0)
    model = LeNet5(list(INPUT_SHAPE), 10)
    gate_model(model)
    with torch.no_grad():
        for fraction, (_, layer) in zip(keep, gated_layers(model)):
            log_alpha = layer.gate.log_alpha
            log_alpha.fill_(-4.0)
            log_alpha[: max(1, round(fraction * log_alpha.numel()))] = 4.0
    return purge(model.eval(), INPUT_SHAPE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", help="a method=l0 lenet5 run whose export/ holds the purged model")
    parser.add_argument("--keep", type=float, nargs=4, default=[0.45, 0.36, 0.12, 0.06],
                        help="kept fraction of conv1 channels, conv2 channels, fc1 inputs, fc2 inputs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    purged = load_exported(args.run_dir) if args.run_dir else synthetic_purge(args.keep)
    dense = LeNet5(list(INPUT_SHAPE), 10).eval()
    share = count_params(purged) / count_params(dense)
    print(f"purged {count_params(purged):,} params of {count_params(dense):,} dense ({share:.2%}); "
          f"threads={args.threads} source={'run ' + args.run_dir if args.run_dir else 'synthetic gates ' + str(args.keep)}")
    for batch_size in args.batch_sizes:
        timings = {name: measure_latency(model, INPUT_SHAPE, batch_size=batch_size, threads=args.threads,
                                         min_run_time=args.min_run_time)["ms"]
                   for name, model in (("dense", dense), ("purged", purged))}
        print(f"batch {batch_size:4d}  dense {timings['dense']:8.3f} ms  purged {timings['purged']:8.3f} ms  "
              f"speed-up {timings['dense'] / timings['purged']:5.2f}x  (goal >= 3x at <= 5 % params)")


if __name__ == "__main__":
    main()
