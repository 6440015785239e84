"""The hardware node: GPU presets, validation, channels_last and torch.compile applied to any method's model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from consparse.accelerate import HardwareSettings, is_compiled, prepare_model, release_model
from consparse.errors import ConfigError
from consparse.report.results import read_results
from consparse.train import run


def conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.mark.parametrize("hardware", ["gpu", "multigpu", "slurm"])
def test_gpu_presets_train_in_bf16_with_autotuning_and_channels_last(make_config, hardware: str) -> None:
    cfg = make_config(f"hardware={hardware}")
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.benchmark is True
    settings = HardwareSettings.from_config(cfg.hardware)
    assert settings.channels_last and settings.on_device_data and not settings.compile
    assert settings.num_workers >= 1


@pytest.mark.parametrize("hardware", ["cpu", "cpu_ddp"])
def test_cpu_presets_keep_fp32_and_leave_the_model_alone(make_config, hardware: str) -> None:
    cfg = make_config(f"hardware={hardware}")
    assert cfg.trainer.precision == "32-true"
    assert HardwareSettings.from_config(cfg.hardware) == HardwareSettings()


@pytest.mark.parametrize(
    ("node", "key"),
    [
        ({"compiled": True}, "hardware"),
        ({"compile": "yes"}, "hardware.compile"),
        ({"channels_last": 1}, "hardware.channels_last"),
        ({"num_workers": -1}, "hardware.num_workers"),
        ({"on_device_data": None}, "hardware.on_device_data"),
    ],
)
def test_bad_hardware_values_name_their_key(node: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        HardwareSettings.from_config(node)
    assert error.value.field == key


def test_a_bad_hardware_value_stops_the_run_before_training(make_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hardware.num_workers"):
        run(make_config("method=dense", "hardware.num_workers=-2"))
    assert read_results(tmp_path / "run")["status"] == "failed"


def test_channels_last_applies_to_conv_nets_only_and_is_released() -> None:
    net = conv_net()
    prepare_model(net, HardwareSettings(channels_last=True))
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not net[0].weight.is_contiguous()
    release_model(net)
    assert net[0].weight.is_contiguous()
    mlp = nn.Sequential(nn.Linear(4, 4))
    before = mlp[0].weight
    prepare_model(mlp, HardwareSettings(channels_last=True))
    assert mlp[0].weight is before and mlp[0].weight.is_contiguous()


def test_channels_last_keeps_the_parameters_the_optimiser_holds() -> None:
    net = conv_net()
    parameters = list(net.parameters())
    prepare_model(net, HardwareSettings(channels_last=True))
    assert all(a is b for a, b in zip(parameters, net.parameters()))


@pytest.mark.slow
def test_compile_keeps_the_module_its_keys_and_its_outputs_and_is_released() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    keys = list(net.state_dict())
    x = torch.randn(4, 6)
    eager = net(x)
    prepare_model(net, HardwareSettings(compile=True))
    assert is_compiled(net) and isinstance(net, nn.Sequential) and list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), eager)
    release_model(net)
    assert not is_compiled(net)
    copied = copy.deepcopy(net)
    with torch.no_grad():
        copied[0].weight.zero_()
    torch.testing.assert_close(net(x), eager)


@pytest.mark.parametrize("method", ["sfw", "l0"])
def test_a_bf16_channels_last_run_completes_and_says_so(make_config, tmp_path: Path, method: str) -> None:
    """The GPU settings on the CPU (bf16 autocast exists there too): sfw's LMOs and l0's gates under autocast."""
    cfg = make_config(
        f"method={method}", "model=lenet5", "dataset=synthetic", "dataset.input_shape=[3,16,16]",
        "dataset.train_size=128", "dataset.test_size=64", "trainer.precision=bf16-mixed",
        "hardware.channels_last=true", "evaluation.compression_grid.unstructured=[0.0]",
        "evaluation.compression_grid.filter=[]", "evaluation.compression_grid.lowrank=[]",
    )
    results = run(cfg)
    assert results["status"] == "completed"
    assert results["hardware"]["channels_last"] is True and results["hardware"]["precision"] == "bf16-mixed"
    assert 0.0 <= results["test_accuracy"] <= 1.0 and results["compression_curve"]
