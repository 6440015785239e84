"""Shared compression and measurement: counting, pruning, low-rank, latency, export, evaluation.

Methods never re-implement these; ``consparse.train`` measures every deployed model with them.
"""

from consparse.compress.count import (
    ModelStats,
    count_macs,
    count_params,
    density,
    model_stats,
    nonzero_count,
    numel_count,
    per_layer_density,
    sparsifiable_weights,
)
from consparse.compress.evaluate import (
    compression_curve,
    evaluate_accuracies,
    evaluate_accuracy,
    recalibrate_batchnorm,
)
from consparse.compress.export import export_model, load_exported
from consparse.compress.latency import compare_latency, measure_latency
from consparse.compress.layers import ChannelScatter, IndexSelect, LowRankConv2d, LowRankLinear
from consparse.compress.lowrank import lowrank_decompose
from consparse.compress.nm import export_nm, load_nm_export, nm_masks, nm_prune
from consparse.compress.prune import (
    apply_masks,
    compute_masks,
    filter_prune,
    magnitude_prune,
    magnitude_prune_amounts,
    prune_to_density,
)

__all__ = [
    "ChannelScatter",
    "IndexSelect",
    "LowRankConv2d",
    "LowRankLinear",
    "ModelStats",
    "apply_masks",
    "compare_latency",
    "compression_curve",
    "compute_masks",
    "count_macs",
    "count_params",
    "density",
    "evaluate_accuracies",
    "evaluate_accuracy",
    "export_model",
    "export_nm",
    "filter_prune",
    "load_exported",
    "load_nm_export",
    "lowrank_decompose",
    "magnitude_prune",
    "magnitude_prune_amounts",
    "measure_latency",
    "model_stats",
    "nm_masks",
    "nm_prune",
    "nonzero_count",
    "numel_count",
    "per_layer_density",
    "prune_to_density",
    "recalibrate_batchnorm",
    "sparsifiable_weights",
]
