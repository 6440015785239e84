"""method.trim_to_target: a deployed l0 model never keeps more than its target, closing the weakest gates."""

from __future__ import annotations

import pytest
import torch

from consparse.compress.count import density
from consparse.config import instantiate_node
from consparse.errors import ConfigError
from consparse.gates import gated_layers
from consparse.gates.hard_concrete import LOG_ALPHA_MIN, HardConcreteGate
from consparse.gates.kept import KeptWeights
from consparse.gates.trim import close_weakest_gates
from consparse.methods import build_method
from consparse.models import build_model


def _method(make_config, *overrides: str):
    cfg = make_config("method=l0", *overrides)
    info = instantiate_node(cfg.dataset).info
    torch.manual_seed(0)
    method = build_method(cfg.method, build_model(cfg.model, info), info)
    # Spread the gates' log_alpha so that their order is the only thing that decides which close.
    for _, layer in gated_layers(method.model):
        layer.gate.log_alpha.data.uniform_(-1.0, 3.0)
    return method


def _deployed(method) -> float:
    return float(KeptWeights(method.model, method.info.input_shape).model_density(deployed=True))


@pytest.mark.parametrize("overrides", [(), ("method.sparsity=unstructured",), ("model=lenet5", "dataset.image_size=28")],
                         ids=["structured", "unstructured", "lenet5"])
def test_the_deployed_model_keeps_at_most_the_target_and_closes_the_weakest_gates(make_config, overrides) -> None:
    method = _method(make_config, "method.target_density=0.1", *overrides)
    before = {name: layer.gate.log_alpha.detach().clone() for name, layer in gated_layers(method.model)}
    assert _deployed(method) > 0.1
    deployment = method.finalize(None)
    reached = density(deployment.model, deployment.reference)
    assert reached <= 0.1
    closed = method.method_metrics()["trimmed_gates"]
    assert closed > 0
    # Every gate the trim closed had a lower log_alpha than every gate left open ...
    layers = dict(gated_layers(method.model))
    closed_gates = [(name, int(i), float(before[name].flatten()[i])) for name, layer in layers.items()
                    for i in torch.nonzero(layer.gate.log_alpha.flatten() == LOG_ALPHA_MIN).flatten()]
    assert len(closed_gates) == closed
    left_open = torch.cat([before[name][layer.gate.log_alpha != LOG_ALPHA_MIN] for name, layer in layers.items()])
    assert max(value for *_, value in closed_gates) <= float(left_open.min())
    # ... and no more were closed than needed: reopening the last one puts the model above its target.
    name, index, value = max(closed_gates, key=lambda gate: gate[2])
    layers[name].gate.log_alpha.data.view(-1)[index] = value
    assert _deployed(method) > 0.1


def test_without_trim_the_model_deploys_as_trained(make_config) -> None:
    method = _method(make_config, "method.target_density=0.1", "method.trim_to_target=false")
    expected = _deployed(method)
    deployment = method.finalize(None)
    assert density(deployment.model, deployment.reference) == pytest.approx(expected, abs=1e-6) and expected > 0.1
    assert method.method_metrics()["trimmed_gates"] == 0


def test_a_model_under_its_target_is_not_touched(make_config) -> None:
    method = _method(make_config, "method.target_density=1.0")
    before = [layer.gate.log_alpha.detach().clone() for _, layer in gated_layers(method.model)]
    method.finalize(None)
    assert method.method_metrics()["trimmed_gates"] == 0
    for original, (_, layer) in zip(before, gated_layers(method.model)):
        assert torch.equal(original, layer.gate.log_alpha)


def test_layer_wise_targets_trim_each_layer_to_its_own(make_config) -> None:
    method = _method(make_config, "method.target_density=[0.2,0.5,1.0]")
    method.finalize(None)
    densities = method.deployed_densities().tolist()
    assert densities[0] <= 0.2 and densities[1] <= 0.5
    assert method.method_metrics()["trimmed_gates"] > 0


def test_closing_every_gate_is_the_most_it_does() -> None:
    gates = [HardConcreteGate(4), HardConcreteGate(3)]
    for gate in gates:
        gate.log_alpha.data.fill_(2.0)
    # A density that never gets under the target (ungated weights hold more) closes every gate.
    assert close_weakest_gates(gates, lambda: 0.5, 0.1) == 7
    assert all(bool((gate.test_gate() == 0).all()) for gate in gates)


def test_trim_to_target_must_be_a_boolean(make_config) -> None:
    with pytest.raises(ConfigError, match="method.trim_to_target"):
        _method(make_config, "method.trim_to_target=sometimes")
