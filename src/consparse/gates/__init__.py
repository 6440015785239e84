"""Hard-concrete gates (L0 regularisation): gated layers, conversion of a model, density bookkeeping, purge."""

from consparse.gates.batchnorm import GatedBatchNorm2d
from consparse.gates.chains import BLOCK_LAYOUTS, find_chains
from consparse.gates.convert import (
    clamp_gates,
    fold_gates,
    gate_model,
    gate_parameters,
    gateable_layers,
    gated_layers,
)
from consparse.gates.density import (
    deterministic_gate_densities,
    expected_l2,
    expected_layer_densities,
    expected_model_density,
    weight_counts,
)
from consparse.gates.hard_concrete import HardConcreteGate
from consparse.gates.layers import GatedConv2d, GatedLayer, GatedLinear
from consparse.gates.noise import batch_noise_seed, seeded_gate_noise
from consparse.gates.purge import purge

__all__ = [
    "BLOCK_LAYOUTS",
    "GatedBatchNorm2d",
    "GatedConv2d",
    "GatedLayer",
    "GatedLinear",
    "HardConcreteGate",
    "batch_noise_seed",
    "clamp_gates",
    "deterministic_gate_densities",
    "expected_l2",
    "expected_layer_densities",
    "expected_model_density",
    "find_chains",
    "fold_gates",
    "gate_model",
    "gate_parameters",
    "gateable_layers",
    "gated_layers",
    "purge",
    "seeded_gate_noise",
    "weight_counts",
]
