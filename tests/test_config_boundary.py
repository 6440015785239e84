"""The config boundary: library code names its arguments, the place a node is built adds the key."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from consparse.config import instantiate_node, taken_arguments
from consparse.data.info import DatasetInfo
from consparse.errors import ConfigError, ConfigPlace, ParameterError, config_key, parameter_prefix
from consparse.methods.registry import build_method
from consparse.models.mlp import MLP
from consparse.models.registry import build_model
from consparse.optim import FrankWolfe
from consparse.optim.constraints import LpBall
from consparse.validation import check_known_keys, check_range, settings_from

INFO = DatasetInfo(name="blobs", input_shape=(8,), num_classes=3, kind="vector")


def test_the_boundary_adds_the_node_key_to_a_relative_name() -> None:
    with pytest.raises(ConfigError) as caught, config_key("method"):
        check_range("dual_lr", -1.0, 0.0, low_inclusive=False)
    assert not isinstance(caught.value, ParameterError)
    assert str(caught.value) == "method.dual_lr: got -1.0; allowed: > 0.0"


def test_nested_builders_prefix_their_sub_node() -> None:
    with pytest.raises(ConfigError) as caught, config_key("method"), parameter_prefix("constraint"), \
            parameter_prefix("table"):
        raise ParameterError("bias", "got 'l7'")
    assert caught.value.field == "method.constraint.table.bias" and caught.value.message == "got 'l7'"


def test_an_error_about_the_node_itself_names_the_node() -> None:
    with pytest.raises(ConfigError) as caught, config_key("hardware"):
        check_known_keys("", {"compile": True, "gpus": 2}, ["compile", "channels_last"])
    assert str(caught.value) == "hardware: unknown keys ['gpus']; allowed: compile, channels_last"


def test_an_argument_from_another_node_is_reported_under_that_node() -> None:
    place = ConfigPlace("method", {"model": "model"})
    with pytest.raises(ConfigError) as caught, config_key(place):
        raise ParameterError("model.hidden", "the network has no hidden layer")
    assert caught.value.field == "model.hidden"
    with pytest.raises(ConfigError) as caught, config_key(place):
        raise ParameterError("model", "not a Linear/ReLU chain")
    assert caught.value.field == "model"
    assert place.full_key("modelling") == "method.modelling"  # a prefix of a name is not the argument


def test_full_keys_and_code_built_objects_pass_through() -> None:
    with pytest.raises(ConfigError) as caught, config_key("method"):
        raise ConfigError("trainer.max_epochs", "too few")
    assert caught.value.field == "trainer.max_epochs"
    with pytest.raises(ParameterError) as relative, config_key(None):
        raise ParameterError("lr", "got 0")
    assert relative.value.name == "lr" and str(relative.value) == "lr: got 0"


def test_library_objects_built_in_code_name_their_own_arguments() -> None:
    with pytest.raises(ParameterError) as caught:
        MLP([8], 3, hidden=[0])
    assert caught.value.name == "hidden" and isinstance(caught.value, ValueError)
    parameter = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ParameterError) as caught:
        FrankWolfe([{"params": [parameter], "constraint": LpBall(parameter.shape, 1.0)}], lr=0.1, momentum=1.5)
    assert caught.value.name == "momentum"


def test_settings_from_refuses_unknown_keys() -> None:
    from consparse.accelerate import HardwareSettings

    assert settings_from(HardwareSettings, None) == HardwareSettings()
    with pytest.raises(ParameterError, match=r"^unknown keys \['gpus'\]; allowed: compile, channels_last"):
        settings_from(HardwareSettings, {"gpus": 2})
    with pytest.raises(ConfigError, match=r"^hardware: unknown keys \['gpus'\]"):
        HardwareSettings.from_config({"gpus": 2})


def test_instantiate_node_refuses_keys_the_target_does_not_take() -> None:
    node = OmegaConf.create({"_target_": "consparse.models.mlp.MLP", "name": "mlp", "hidden": [4], "widht": 3})
    with pytest.raises(ConfigError) as caught:
        build_model(node, INFO)
    assert caught.value.field == "model"
    assert caught.value.message.startswith("unknown keys ['widht']; allowed: hidden")
    assert "input_shape" not in caught.value.message  # passed by the boundary, not a config key


def test_a_method_node_is_checked_up_its_bases_and_told_its_place() -> None:
    model = MLP([8], 3, hidden=[4])
    node = {"_target_": "consparse.methods.sfw.SFWMethod", "name": "sfw", "target_density": 0.5,
            "optimizer": {"_target_": "consparse.optim.FrankWolfe", "_partial_": True, "lr": 0.1},
            "constraint": {"kind": "ksupport"}, "unconstrained_lr": None}
    method = build_method(node, model, INFO)
    assert method.config_place == ConfigPlace("method", {"model": "model"})
    with pytest.raises(ConfigError, match=r"^method: unknown keys \['dual_lr'\]; allowed: constraint, unconstrained_lr"):
        build_method({**node, "dual_lr": 0.1}, model, INFO)
    with pytest.raises(ConfigError) as caught:
        build_method({**node, "constraint": {"kind": "ksupport", "value": 0}}, model, INFO)
    assert caught.value.field == "method.constraint.value"


def test_a_hook_after_the_boundary_reports_under_the_place_it_was_given() -> None:
    node = {"_target_": "consparse.methods.dense.DenseMethod", "name": "dense",
            "optimizer": {"_target_": "consparse.optim.FrankWolfe", "_partial_": True, "lr": 0.1, "momentum": 1.5}}
    method = build_method(node, MLP([8], 3, hidden=[4]), INFO)
    with pytest.raises(ConfigError) as caught:
        method.configure_optimizers()
    assert caught.value.field == "method.optimizer.momentum"


def test_taken_arguments_stop_at_code_outside_consparse() -> None:
    assert taken_arguments(MLP)[:3] == ["input_shape", "num_classes", "hidden"]
    assert taken_arguments(torch.optim.SGD) is None


def test_a_node_built_without_a_key_keeps_relative_names() -> None:
    node = {"_target_": "consparse.models.mlp.MLP", "hidden": [0]}
    with pytest.raises(ParameterError) as caught:
        instantiate_node(node, input_shape=[8], num_classes=3)
    assert caught.value.name == "hidden"


def test_a_node_inside_a_node_is_checked_under_its_own_key() -> None:
    model = MLP([8], 3, hidden=[4])
    node = {"_target_": "consparse.methods.dense.DenseMethod", "name": "dense",
            "optimizer": {"_target_": "consparse.optim.FrankWolfe", "_partial_": True, "lr": 0.1, "momentun": 0.5}}
    with pytest.raises(ConfigError) as caught:
        build_method(node, model, INFO)
    assert caught.value.field == "method.optimizer"
    assert caught.value.message.startswith("unknown keys ['momentun']; allowed: params, lr, momentum, ")
    torch_optimizer = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "anything": 1}
    build_method({**node, "optimizer": torch_optimizer}, model, INFO)  # torch checks its own arguments


def test_run_level_checks_raise_complete_config_errors(make_config) -> None:
    from consparse.run_config import check_run_config

    for override, key in [("seed=-1", "seed"), ("method.optimizer.lr=-0.1", "method.optimizer.lr")]:
        with pytest.raises(ConfigError) as caught:
            check_run_config(make_config("method=dense", override))
        assert caught.value.field == key and not isinstance(caught.value, ParameterError)
