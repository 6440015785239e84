"""method.divide_gated_conv_decay and method.gate_placement reach the loss and the gated model."""

from __future__ import annotations

import pytest
import torch

from consparse.config import instantiate_node
from consparse.errors import ConfigError
from consparse.gates import GatedBatchNorm2d, GatedConv2d, gated_layers
from consparse.methods import build_method
from consparse.models import build_model


def _method(make_config, *overrides: str):
    cfg = make_config("method=l0", "dataset=synthetic", *overrides)
    info = instantiate_node(cfg.dataset).info
    torch.manual_seed(0)
    return build_method(cfg.method, build_model(cfg.model, info), info)


def _objective(method) -> torch.Tensor:
    method.log = lambda *args, **kwargs: None
    x = torch.randn(4, *method.info.input_shape, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4) % method.info.num_classes
    return method.training_step((x, y), 0)


def test_dividing_gated_conv_decay_adds_the_convs_share_to_the_loss(make_config) -> None:
    common = ("model=lenet5", "method.weight_decay=0.1", "method.droprate_init=0.3")
    plain = _method(make_config, *common)
    divided = _method(make_config, *common, "method.divide_gated_conv_decay=true")
    convs = sum(layer.expected_l2() for _, layer in gated_layers(plain.model) if isinstance(layer, GatedConv2d))
    torch.testing.assert_close(_objective(divided) - _objective(plain), 0.5 * 0.1 * convs * (1 / 0.7 - 1))


def test_divide_gated_conv_decay_must_be_a_boolean(make_config) -> None:
    with pytest.raises(ConfigError, match="method.divide_gated_conv_decay"):
        _method(make_config, "method.divide_gated_conv_decay=sometimes")


@pytest.mark.parametrize("placement", ["norm_output", "filter"])
def test_gate_placement_reaches_the_batchnorms_and_the_results(make_config, placement: str) -> None:
    method = _method(make_config, "model=resnet20", "dataset.input_shape=[3,16,16]", f"method.gate_placement={placement}")
    norms = [m for m in method.model.modules() if isinstance(m, GatedBatchNorm2d)]
    assert norms and all(norm.placement == placement for norm in norms)
    assert method.method_metrics()["gate_placement"] == placement
    assert torch.isfinite(_objective(method))
