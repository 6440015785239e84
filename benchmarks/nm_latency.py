"""2:4 semi-structured sparse Linear stacks against dense at batch 256 on one GPU, measured in one run.

Stacks: the text_mlp of 20 Newsgroups (10000-512-256-20) and a 4096-wide MLP (4096-4096-4096-4096-4096,
four 4096x4096 layers). Each is 2:4 magnitude-pruned (``consparse.compress.nm.nm_prune``), deployed
with ``torch.sparse.to_sparse_semi_structured`` (``consparse.compress.semi_structured``) and timed
against the dense stack in the same dtype, alternately over rounds. Printed and written as JSON:
the GPU's name, both latencies, the speed-up (goal: >= 1.3x), the layers converted and kept dense,
and the largest difference of the deployed outputs from the masked model's in float32.

Every run, GPU or not, also checks the N:M export on the CPU: the pruned stack is exported
(``export_model`` + ``export_nm``), loaded back, checked 2:4 in every layer, and its outputs compared
with the masked model's. Without a sparse-capable GPU the latency rows say "not measured".

    python benchmarks/nm_latency.py                      # make gpu-check runs it too
    python benchmarks/nm_latency.py --dtype bfloat16 --out outputs/nm_latency.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from consparse.compress.count import sparsifiable_weights
from consparse.compress.export import export_model
from consparse.compress.nm import export_nm, load_nm_export, nm_prune
from consparse.compress.semi_structured import DTYPES, GPU_BATCH, compare_semi_structured
from consparse.models.mlp import MLP
from consparse.nm_pattern import NMPattern

TWO_FOUR = NMPattern(2, 4)
# name -> (input features, hidden widths, classes)
STACKS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "text_mlp 10000-512-256-20": (10000, (512, 256), 20),
    "mlp 4096-4096-4096-4096-4096": (4096, (4096, 4096, 4096), 4096),
}
# The CPU-sized check of benchmarks/gpu_check.py --tiny: the same code in a second.
TINY_STACKS = {"mlp 64-64-32": (64, (64,), 32)}
GOAL_SPEEDUP = 1.3


def build(features: int, hidden: tuple[int, ...], classes: int) -> MLP:
    torch.manual_seed(0)
    return MLP([features], classes, hidden=hidden).eval()


def cpu_export_check(dense: MLP, masked: MLP, features: int, hidden: tuple[int, ...], classes: int) -> dict[str, Any]:
    """Export the 2:4 stack, load it back, and compare it with the masked model on the CPU."""
    spec = {"_target_": "consparse.models.mlp.MLP", "hidden": list(hidden), "input_shape": [features],
            "num_classes": classes}
    with tempfile.TemporaryDirectory() as directory:
        export_model(masked, directory, {"benchmark": "nm_latency"}, spec)
        export_nm(masked, directory, TWO_FOUR)
        loaded, masks, _ = load_nm_export(directory)
    inputs = torch.randn(8, features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        difference = float((loaded(inputs) - masked(inputs)).abs().max())
    weights = sparsifiable_weights(loaded)
    return {
        "layers_two_four": sum(TWO_FOUR.holds_for(weights[name]) and TWO_FOUR.holds_for(mask)
                               for name, mask in masks.items()),
        "layers": len(weights),
        "max_abs_difference_vs_masked": difference,
    }


def measure(
    batch_size: int = GPU_BATCH, dtype: str = "float16", stacks: dict[str, tuple[int, tuple[int, ...], int]] = STACKS
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, (features, hidden, classes) in stacks.items():
        dense = build(features, hidden, classes)
        masked = nm_prune(dense, TWO_FOUR)
        rows[name] = {
            "gpu": compare_semi_structured(masked, dense, [features], batch_size, dtype),
            "cpu_export_check": cpu_export_check(dense, masked, features, hidden, classes),
        }
        del dense, masked
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"batch_size": batch_size, "dtype": dtype, "goal_speedup": GOAL_SPEEDUP, "stacks": rows,
            "torch_version": torch.__version__}


def print_rows(record: dict[str, Any]) -> None:
    print(f"2:4 semi-structured vs dense, batch {record['batch_size']}, {record['dtype']} (goal >= {GOAL_SPEEDUP}x)")
    for name, row in record["stacks"].items():
        gpu, check = row["gpu"], row["cpu_export_check"]
        export = (f"export: {check['layers_two_four']}/{check['layers']} layers 2:4, "
                  f"max |diff| {check['max_abs_difference_vs_masked']:.1e}")
        if gpu["measured"]:
            print(f"  {name}: {gpu['latency_ms']:.3f} ms vs {gpu['dense_latency_ms']:.3f} ms dense, "
                  f"{gpu['speedup']:.2f}x on {gpu['gpu']} (converted {len(gpu['converted'])}, "
                  f"kept dense {list(gpu['kept_dense'])}); {export}")
        else:
            print(f"  {name}: {gpu['reason']}; {export}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=GPU_BATCH)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument("--out", type=Path, default=None, help="write the record as JSON here")
    args = parser.parse_args()
    record = measure(args.batch, args.dtype)
    print_rows(record)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
