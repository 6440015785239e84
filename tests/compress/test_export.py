"""Export (safetensors + JSON structure) and loading, for plain, pruned, decomposed and purged models."""

from __future__ import annotations

import copy
import json
import os
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from consparse.compress.export import ExportError, export_model, load_exported
from consparse.compress.export_structure import LAYER_TYPES, apply_structure, describe_structure
from consparse.compress.layers import ChannelScatter, IndexSelect, LowRankConv2d, LowRankLinear
from consparse.compress.lowrank import lowrank_decompose
from consparse.compress.prune import magnitude_prune
from consparse.models.mlp import MLP
from consparse.models.registry import ARCHITECTURES

from .conftest import tiny_cnn, tiny_resnet

MLP_SPEC = {
    "_target_": "consparse.models.mlp.MLP",
    "name": "mlp",
    "input_shape": [12],
    "num_classes": 4,
    "hidden": [16, 8],
}
CONFIG = {"method": {"name": "dense"}, "seed": 3}


def architecture(name: str, **arguments: Any) -> dict[str, Any]:
    """An architecture description of a test architecture (shape and classes unused by its builder)."""
    return {"architecture": name, "arguments": arguments, "input_shape": [1], "num_classes": 1}


@pytest.fixture(autouse=True)
def test_architectures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The conftest's tiny models and a few single layers, registered as architectures for these tests."""
    builders = {
        "tiny_cnn": lambda input_shape, num_classes: tiny_cnn(),
        "tiny_resnet": lambda input_shape, num_classes: tiny_resnet(),
        "linear": lambda input_shape, num_classes, in_features, out_features: nn.Linear(in_features, out_features),
        "tied_pair": lambda input_shape, num_classes: nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)),
    }
    for name, builder in builders.items():
        monkeypatch.setitem(ARCHITECTURES, name, builder)


CNN_SPEC = architecture("tiny_cnn")
RESNET_SPEC = architecture("tiny_resnet")


def round_trip(model: nn.Module, spec: dict[str, Any], run_dir: Path, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        before = copy.deepcopy(model).eval()(x)
    relative = export_model(model, run_dir, CONFIG, spec)
    assert relative == "export/model.json"
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.json", "model.safetensors"]
    loaded = load_exported(run_dir)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before, atol=1e-6, rtol=0)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    return loaded


def test_plain_mlp_round_trip_needs_no_structure(small_mlp: MLP, tmp_path: Path, watch) -> None:
    check = watch(small_mlp)
    round_trip(small_mlp, MLP_SPEC, tmp_path, torch.randn(3, 12))
    description = json.loads((tmp_path / "export" / "model.json").read_text())
    assert description["structure"] == []
    assert description["config"] == CONFIG
    assert (description["architecture"], description["arguments"]) == ("mlp", {"hidden": [16, 8]})
    assert (description["input_shape"], description["num_classes"]) == ([12], 4)
    check()


def test_config_may_be_an_omegaconf_node(small_mlp: MLP, tmp_path: Path) -> None:
    export_model(
        small_mlp, tmp_path, OmegaConf.create({"seed": "${oc.env:NO_SUCH_VAR,7}"}), OmegaConf.create(MLP_SPEC)
    )
    assert json.loads((tmp_path / "export" / "model.json").read_text())["config"] == {"seed": "7"}


def test_pruned_mlp_round_trip_keeps_its_zeros(small_mlp: MLP, tmp_path: Path) -> None:
    pruned = magnitude_prune(small_mlp, 0.7)
    loaded = round_trip(pruned, MLP_SPEC, tmp_path, torch.randn(3, 12))
    for name, tensor in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_low_rank_mlp_round_trip(small_mlp: MLP, tmp_path: Path) -> None:
    decomposed = lowrank_decompose(small_mlp, 0.5)
    loaded = round_trip(decomposed, MLP_SPEC, tmp_path, torch.randn(3, 12))
    assert isinstance(loaded.layers[1], LowRankLinear) and loaded.layers[1].rank == 6


def test_low_rank_cnn_round_trip(small_cnn: nn.Sequential, tmp_path: Path) -> None:
    decomposed = lowrank_decompose(small_cnn, 0.5)
    loaded = round_trip(decomposed, CNN_SPEC, tmp_path, torch.randn(2, 3, 8, 8))
    assert isinstance(loaded[3], LowRankConv2d) and loaded[3][0].dilation == (2, 2)


def test_sliced_linear_with_index_select_round_trip(small_mlp: MLP, tmp_path: Path) -> None:
    """An L0 purge of input-neuron gates: inputs 2, 5, 7 and hidden neurons 3, 9 removed."""
    kept_inputs = torch.tensor([i for i in range(12) if i not in (2, 5, 7)])
    kept_hidden = torch.tensor([j for j in range(16) if j not in (3, 9)])
    first, second = small_mlp.layers[1], small_mlp.layers[3]
    with torch.no_grad():  # what closed gates on hidden neurons 3 and 9 leave in the dense model
        first.weight[[3, 9]] = 0.0
        first.bias[[3, 9]] = 0.0
    purged = copy.deepcopy(small_mlp)
    sliced_first = nn.Linear(len(kept_inputs), len(kept_hidden))
    sliced_second = nn.Linear(len(kept_hidden), 8)
    with torch.no_grad():
        sliced_first.weight.copy_(first.weight[kept_hidden][:, kept_inputs])
        sliced_first.bias.copy_(first.bias[kept_hidden])
        sliced_second.weight.copy_(second.weight[:, kept_hidden])
        sliced_second.bias.copy_(second.bias)
    purged.layers[1] = nn.Sequential(IndexSelect(1, kept_inputs), sliced_first)
    purged.layers[3] = sliced_second
    x = torch.randn(4, 12)
    x[:, [2, 5, 7]] = 0.0  # what the closed input gates pass on
    with torch.no_grad():
        torch.testing.assert_close(purged(x), small_mlp.eval()(x))  # the purge itself is right
    loaded = round_trip(purged, MLP_SPEC, tmp_path, torch.randn(4, 12))
    assert torch.equal(loaded.layers[1][0].indices, kept_inputs)


def test_resnet_block_with_sliced_batchnorm_and_channel_scatter_round_trip(
    small_resnet: nn.Sequential, tmp_path: Path
) -> None:
    """A purged BasicBlock: 5 of 8 inner channels, 6 of 8 output channels scattered back to 8."""
    block = small_resnet[3]
    inner = torch.tensor([0, 1, 3, 4, 6])
    outer = torch.tensor([0, 2, 3, 4, 5, 7])
    purged = copy.deepcopy(small_resnet)
    purged_block = purged[3]
    purged_block.conv1 = nn.Conv2d(8, 5, 3, padding=1, bias=False)
    purged_block.bn1 = nn.BatchNorm2d(5)
    purged_block.conv2 = nn.Conv2d(5, 6, 3, padding=1, bias=False)
    purged_block.bn2 = nn.Sequential(nn.BatchNorm2d(6), ChannelScatter(8, outer))
    with torch.no_grad():
        purged_block.conv1.weight.copy_(block.conv1.weight[inner])
        purged_block.conv2.weight.copy_(block.conv2.weight[outer][:, inner])
        for sliced, full, kept in (
            (purged_block.bn1, block.bn1, inner),
            (purged_block.bn2[0], block.bn2, outer),
        ):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(sliced, name).copy_(getattr(full, name)[kept])
    purged.eval()
    loaded = round_trip(purged, RESNET_SPEC, tmp_path, torch.randn(2, 3, 8, 8))
    assert isinstance(loaded[3].bn2[1], ChannelScatter)
    assert loaded[3].bn1.running_mean.shape == (5,)


def test_a_float64_model_comes_back_in_float64(small_mlp: MLP, tmp_path: Path) -> None:
    loaded = round_trip(small_mlp.double(), MLP_SPEC, tmp_path, torch.randn(3, 12, dtype=torch.float64))
    assert loaded.layers[1].weight.dtype == torch.float64


def test_tied_weights_are_exported(tmp_path: Path) -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    round_trip(model, architecture("tied_pair"), tmp_path, torch.randn(2, 4))


def test_a_model_of_another_class_exports_with_its_own_spec(tmp_path: Path) -> None:
    model = MLP([12], 4, hidden=(5,))
    model.export_spec = {"_target_": "consparse.models.mlp.MLP", "input_shape": [12], "num_classes": 4, "hidden": [5]}
    round_trip(model, CNN_SPEC, tmp_path, torch.randn(2, 12))
    assert json.loads((tmp_path / "export" / "model.json").read_text())["arguments"] == {"hidden": [5]}


def test_a_root_of_another_class_is_described_when_it_can_be(small_mlp: MLP, tmp_path: Path) -> None:
    round_trip(
        lowrank_decompose(nn.Linear(12, 12), 0.75),
        architecture("linear", in_features=12, out_features=12),
        tmp_path,
        torch.randn(2, 12),
    )


def test_removed_and_reordered_children_are_rebuilt() -> None:
    skeleton = MLP([12], 4, hidden=(16, 8), dropout=0.1)
    deployed = copy.deepcopy(skeleton)
    del deployed.layers[6]
    del deployed.layers[3]
    edits = describe_structure(deployed, MLP([12], 4, hidden=(16, 8), dropout=0.1))
    assert {"op": "delete", "path": "layers.7"} in edits
    rebuilt = apply_structure(MLP([12], 4, hidden=(16, 8), dropout=0.1), edits)
    rebuilt.load_state_dict(deployed.state_dict(), strict=True)
    x = torch.randn(2, 12)
    torch.testing.assert_close(rebuilt.eval()(x), deployed.eval()(x))

    def ordered() -> nn.Sequential:
        return nn.Sequential(OrderedDict(a=nn.Linear(2, 2), b=nn.Tanh(), c=nn.Linear(2, 2)))

    swapped = ordered()
    swapped = nn.Sequential(OrderedDict(c=swapped.c, b=swapped.b, a=swapped.a))
    edits = describe_structure(swapped, ordered())
    assert edits == [{"op": "order", "path": "", "children": ["c", "b", "a"]}]
    rebuilt = apply_structure(ordered(), edits)
    rebuilt.load_state_dict(swapped.state_dict())
    x = torch.randn(3, 2)
    torch.testing.assert_close(rebuilt(x), swapped(x))


class Scale(nn.Module):
    """Keeps its constructor argument under another name: cannot be described from attributes."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.value = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value


def test_an_unregistered_layer_type_fails_at_export(small_mlp: MLP, tmp_path: Path) -> None:
    small_mlp.layers[2] = Scale(2.0)
    with pytest.raises(ExportError, match="Scale: it is not a layer type an export may build"):
        export_model(small_mlp, tmp_path, CONFIG, MLP_SPEC)
    assert not (tmp_path / "export").exists()


def test_an_indescribable_module_fails_at_export_not_at_load(
    small_mlp: MLP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LAYER_TYPES, "Scale", Scale)
    small_mlp.layers[2] = Scale(2.0)
    with pytest.raises(ExportError, match="constructor_kwargs"):
        export_model(small_mlp, tmp_path, CONFIG, MLP_SPEC)
    assert not (tmp_path / "export" / "model.json").exists()


class Holder(nn.Module):
    """Describes itself with a value JSON cannot store."""

    def __init__(self, value: object = None) -> None:
        super().__init__()
        self.value = value

    def constructor_kwargs(self) -> dict[str, Any]:
        return {"value": self.value}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_non_json_constructor_argument_fails_at_export(
    small_mlp: MLP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LAYER_TYPES, "Holder", Holder)
    small_mlp.layers[0] = Holder(object())
    with pytest.raises(ExportError, match="JSON"):
        export_model(small_mlp, tmp_path, CONFIG, MLP_SPEC)
    assert not (tmp_path / "export").exists()


def test_loading_uses_no_pickle(small_mlp: MLP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_model(lowrank_decompose(small_mlp, 0.5), tmp_path, CONFIG, MLP_SPEC)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load_exported must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    for path in (tmp_path, tmp_path / "export", tmp_path / "export" / "model.json"):
        assert isinstance(load_exported(path), MLP)


def test_missing_export_names_the_expected_paths(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="model.json"):
        load_exported(tmp_path)


# ----------------------------------------------------------------------------- files that try to run code
def _plant(export_dir: Path, description: dict[str, Any], small_mlp: MLP) -> Path:
    """A model.json beside a genuine model.safetensors (so only the description is hostile)."""
    export_model(small_mlp, export_dir.parent, CONFIG, MLP_SPEC)
    path = export_dir / "model.json"
    path.write_text(json.dumps(description))
    return path


def _genuine(small_mlp: MLP, tmp_path: Path) -> dict[str, Any]:
    export_model(small_mlp, tmp_path / "genuine", CONFIG, MLP_SPEC)
    return json.loads((tmp_path / "genuine" / "export" / "model.json").read_text())


def _payloads(marker: Path, genuine: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Descriptions that would create ``marker`` if any callable they name were imported or called."""
    opener = {"_target_": "builtins.open", "_args_": [str(marker), "w"]}
    set_open = {"op": "set", "path": "layers.9", "type": "builtins.open", "kwargs": {"file": str(marker), "mode": "w"}}
    return {
        # The version 1 format, which went to Hydra's instantiate.
        "v1 model_spec": {**genuine, "version": 1, "model_spec": opener},
        "model_spec key": {**genuine, "model_spec": opener},
        "architecture path": {**genuine, "architecture": "builtins.open", "arguments": {"file": str(marker)}},
        "nested target": {**genuine, "arguments": {"hidden": opener}},
        "unknown argument": {**genuine, "arguments": {"_target_": "builtins.open", "file": str(marker)}},
        "structure type path": {**genuine, "structure": [set_open]},
        "structure kwargs": {**genuine, "structure": [{**set_open, "type": "Linear", "kwargs": {"in_features": opener}}]},
        "state file elsewhere": {**genuine, "state_file": "../../elsewhere.safetensors"},
    }


@pytest.mark.parametrize(
    "case",
    ["v1 model_spec", "model_spec key", "architecture path", "nested target", "unknown argument",
     "structure type path", "structure kwargs", "state file elsewhere"],
)
def test_a_planted_description_runs_nothing_and_names_the_file(small_mlp: MLP, tmp_path: Path, case: str) -> None:
    marker = tmp_path / "pwned"
    path = _plant(tmp_path / "run" / "export", _payloads(marker, _genuine(small_mlp, tmp_path))[case], small_mlp)
    with pytest.raises(ExportError, match=str(path)):
        load_exported(tmp_path / "run")
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit",
    [
        {"op": "set", "path": "layers.training", "type": "Identity", "kwargs": {}},
        {"op": "set", "path": "layers/../x", "type": "Identity", "kwargs": {}},
        {"op": "delete", "path": "layers.forward"},
        {"op": "order", "path": "layers", "children": ["0"]},
        {"op": "order", "path": "layers", "children": [0, 1, 2, 3, 4, 5]},
        {"op": "exec", "path": ""},
        "set",
    ],
)
def test_a_malformed_structure_edit_is_an_export_error(small_mlp: MLP, tmp_path: Path, edit: Any) -> None:
    path = _plant(tmp_path / "run" / "export", {**_genuine(small_mlp, tmp_path), "structure": [edit]}, small_mlp)
    with pytest.raises(ExportError, match=str(path)):
        load_exported(path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_an_unreadable_description_is_an_export_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(ExportError, match=str(tmp_path / "model.json")):
        load_exported(tmp_path)


def test_a_corrupt_state_file_is_an_export_error(small_mlp: MLP, tmp_path: Path) -> None:
    export_model(small_mlp, tmp_path, CONFIG, MLP_SPEC)
    (tmp_path / "export" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ExportError, match="model.json"):
        load_exported(tmp_path)


def test_an_unregistered_architecture_fails_at_export(small_mlp: MLP, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a registered architecture"):
        export_model(small_mlp, tmp_path, CONFIG, {**MLP_SPEC, "_target_": "torch.nn.Sequential"})
    assert not (tmp_path / "export").exists()


def test_export_files_follow_the_umask(small_mlp: MLP, tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        export_model(small_mlp, tmp_path, CONFIG, MLP_SPEC)
    finally:
        os.umask(previous)
    for name in ("model.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "export" / name).stat().st_mode) == 0o640
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["model.json", "model.safetensors"]
