"""``evaluation.lowrank_layers``: which layers the low-rank curve decomposes (the SFW authors' decomp_type)."""

from __future__ import annotations

import pytest
import torch

from consparse.compress.evaluate import compressed_models
from consparse.compress.layers import LowRankConv2d, LowRankLinear
from consparse.errors import ConfigError
from consparse.evaluation import EvaluationSettings

from .conftest import lenet_like


def decomposed_kinds(model: torch.nn.Module) -> set[str]:
    kinds = set()
    for module in model.modules():
        if isinstance(module, LowRankConv2d):
            kinds.add("conv")
        elif isinstance(module, LowRankLinear):
            kinds.add("linear")
    return kinds


@pytest.mark.parametrize(
    ("layers", "expected"), [("all", {"conv", "linear"}), ("conv", {"conv"}), ("linear", {"linear"})]
)
def test_only_the_named_layers_are_decomposed(layers, expected):
    torch.manual_seed(0)
    model = lenet_like().eval()
    [(kind, amount, decomposed)] = compressed_models(model, {"lowrank": [0.8]}, lowrank_layers=layers)
    assert (kind, amount) == ("lowrank", 0.8)
    assert decomposed_kinds(decomposed) == expected
    inputs = torch.randn(2, 1, 28, 28)
    assert decomposed(inputs).shape == model(inputs).shape


def test_a_model_without_the_named_layers_has_no_lowrank_point():
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    assert compressed_models(mlp, {"lowrank": [0.5]}, lowrank_layers="conv") == []


def test_settings_default_to_all_and_refuse_other_names():
    assert EvaluationSettings.from_config({}).lowrank_layers == "all"
    assert EvaluationSettings.from_config({"lowrank_layers": "conv"}).lowrank_layers == "conv"
    with pytest.raises(ConfigError, match="^evaluation.lowrank_layers"):
        EvaluationSettings.from_config({"lowrank_layers": "convs"})
    with pytest.raises(ConfigError, match="^lowrank_layers"):
        compressed_models(lenet_like(), {"lowrank": [0.5]}, lowrank_layers="bias")
