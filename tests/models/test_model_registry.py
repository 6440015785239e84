"""The architecture registry: every shipped model config is describable as data, and only as data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from consparse.config import instantiate_node
from consparse.models import build_model
from consparse.models.registry import ArchitectureError, build_architecture, describe_architecture

# Models an export refuses (their architecture is not the platform's own: a Hugging Face encoder).
NOT_EXPORTABLE = {"distilbert"}
MODELS = sorted(path.stem for path in (Path(__file__).resolve().parents[2] / "conf" / "model").glob("*.yaml") if path.stem not in NOT_EXPORTABLE)
# A dataset each model accepts, small enough to build the model in a test.
DATASET = {"implicit": "digits", "mlp": "digits", "text_mlp": "synthetic", "lenet5": "mnist"}


@pytest.mark.parametrize("name", sorted(NOT_EXPORTABLE))
def test_a_model_the_export_cannot_describe_is_refused_by_name(name: str, make_config) -> None:
    node = {**OmegaConf.to_container(make_config(f"model={name}").model), "input_shape": [2, 8], "num_classes": 3}
    with pytest.raises(ArchitectureError, match="not a registered architecture"):
        describe_architecture(node)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_is_a_registered_architecture(name: str, make_config) -> None:
    cfg = make_config(f"model={name}", f"dataset={DATASET.get(name, 'cifar10')}", "method=dense")
    info = instantiate_node(cfg.dataset).info
    node = {**OmegaConf.to_container(cfg.model), "input_shape": list(info.input_shape), "num_classes": info.num_classes}
    description = describe_architecture(node)
    assert "_target_" not in description["arguments"] and "name" not in description["arguments"]
    torch.manual_seed(0)
    built = build_model(cfg.model, info)
    rebuilt = build_architecture(description)
    assert type(rebuilt) is type(built)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ({"architecture": "os.system", "arguments": {}}, "unknown architecture 'os.system'"),
        ({"architecture": "mlp", "arguments": {"_target_": "os.system"}}, "takes no argument '_target_'"),
        ({"architecture": "mlp", "arguments": {"hidden": {"_target_": "os.system"}}}, "must be a JSON"),
        ({"architecture": "mlp", "arguments": {"hidden": ["a"]}}, "cannot build architecture 'mlp'"),
        ({"architecture": "mlp", "arguments": [], "input_shape": [4]}, "'arguments' a mapping"),
        ({"architecture": "mlp", "arguments": {}, "input_shape": ["4"]}, "input_shape must be a list"),
        ({"architecture": "mlp", "arguments": {}, "num_classes": True}, "num_classes must be a positive"),
    ],
)
def test_a_bad_description_is_refused_with_the_reason(description: dict, message: str) -> None:
    with pytest.raises(ArchitectureError, match=message):
        build_architecture({"input_shape": [4], "num_classes": 2, **description})


def test_a_config_target_outside_the_registry_cannot_be_described() -> None:
    with pytest.raises(ArchitectureError, match="not a registered architecture"):
        describe_architecture({"_target_": "builtins.open", "input_shape": [4], "num_classes": 2})
