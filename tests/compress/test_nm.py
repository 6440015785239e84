"""N:M pruning, the nm curve kind, the N:M export (masks beside the weights) and the semi-structured path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consparse.compress.count import sparsifiable_weights
from consparse.compress.evaluate import compression_curve
from consparse.compress.export import ExportError, export_model, load_exported
from consparse.compress.nm import MASK_FILE, export_nm, load_nm_export, nm_prune, nm_record, nm_violations
from consparse.compress.semi_structured import compare_semi_structured, to_semi_structured, unavailable_reason
from consparse.errors import ConfigError
from consparse.evaluation import EvaluationSettings
from consparse.models.lenet import LeNet5
from consparse.models.mlp import MLP
from consparse.nm_pattern import NMPattern, parse_nm
from consparse.report.results import validate_results

TWO_FOUR = NMPattern(2, 4)


def lenet() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5((1, 16, 16), 10, conv_channels=(6, 8), hidden=(12,))


def group_counts_by_loop(weight: torch.Tensor, m: int) -> list[int]:
    """Non-zeros of every group of m consecutive input weights (dim 1), by explicit loops."""
    counts = []
    rows = weight.movedim(1, -1).reshape(-1, weight.shape[1])
    for row in rows:
        for start in range(0, row.numel(), m):
            counts.append(int((row[start:start + m] != 0).sum()))
    return counts


def test_nm_prune_keeps_the_largest_n_of_every_group_in_every_layer() -> None:
    model = lenet()
    pruned = nm_prune(model, TWO_FOUR)
    for name, weight in sparsifiable_weights(pruned).items():
        original = sparsifiable_weights(model)[name].detach()
        assert max(group_counts_by_loop(weight, 4)) <= 2, name
        rows = original.movedim(1, -1).reshape(-1, original.shape[1])
        kept = weight.detach().movedim(1, -1).reshape(-1, original.shape[1])
        for row, kept_row in zip(rows, kept):
            for start in range(0, row.numel(), 4):
                group, kept_group = row[start:start + 4], kept_row[start:start + 4]
                expected = torch.zeros_like(group)
                top = group.abs().topk(min(2, group.numel())).indices
                expected[top] = group[top]
                assert torch.equal(kept_group, expected)
    assert nm_violations(pruned, TWO_FOUR) == []
    assert nm_violations(model, TWO_FOUR) != [], "the input model is untouched"


def test_parse_nm_reads_strings_and_refuses_yaml_integers() -> None:
    assert parse_nm("2:4", "method.nm") == TWO_FOUR
    assert str(parse_nm(" 1 : 8 ", "method.nm")) == "1:8"
    with pytest.raises(ConfigError, match=r'method.nm: got the integer 124.*"2:4"'):
        parse_nm(124, "method.nm")
    for bad in ("4:4", "0:4", "2/4", None, 0.5):
        with pytest.raises(ConfigError, match="method.nm"):
            parse_nm(bad, "method.nm")


def blobs() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (256,), generator=generator)
    inputs = torch.randn(256, 12, generator=generator)
    inputs[torch.arange(256), labels] += 3.0
    return DataLoader(TensorDataset(inputs, labels), batch_size=64)


def test_the_nm_curve_kind_prunes_every_layer_and_follows_the_schema() -> None:
    torch.manual_seed(0)
    model = MLP([12], 4, hidden=(16, 8))
    curve = compression_curve(model, blobs(), {"unstructured": [0.5], "nm": ["2:4", "1:4"]}, [12], reference=model)
    nm_points = [point for point in curve if point["kind"] == "nm"]
    assert [(p["pattern"], p["amount"], p["density"]) for p in nm_points] == [("2:4", 0.5, 0.5), ("1:4", 0.75, 0.25)]
    assert nm_points[0]["params"] == 12 * 16 // 2 + 16 * 8 // 2 + 8 * 4 // 2 + 16 + 8 + 4
    validate_results({"method": "dense", "model": "mlp", "dataset": "x", "seed": 0, "status": "completed", "setting": {}, "variant": "dense",
                      "test_accuracy": 0.5, "density": 1.0, **{key: 0 for key in (
                          "per_layer_density", "params", "dense_params", "macs", "dense_macs", "latency_ms",
                          "dense_latency_ms", "latency", "target_density", "train_seconds", "epochs", "export")},
                      "method_metrics": {}, "compression_curve": curve})


def test_the_grid_setting_takes_patterns_and_names_the_key_of_a_bad_one() -> None:
    settings = EvaluationSettings.from_config({"compression_grid": {"nm": ["2:4", "1:4"], "unstructured": [0.5]}})
    assert settings.compression_grid == {"nm": ["2:4", "1:4"], "unstructured": [0.5]}
    with pytest.raises(ConfigError, match="evaluation.compression_grid.nm: got the integer 124"):
        EvaluationSettings.from_config({"compression_grid": {"nm": [124]}})
    with pytest.raises(ConfigError, match="evaluation.compression_grid.nm"):
        EvaluationSettings.from_config({"compression_grid": {"nm": [0.5]}})


def _exported(tmp_path, model: nn.Module) -> None:
    spec = {"_target_": "consparse.models.lenet.LeNet5", "conv_channels": [6, 8], "hidden": [12],
            "input_shape": [1, 16, 16], "num_classes": 10}
    export_model(model, tmp_path, {"note": "test"}, spec)


def test_export_round_trip_keeps_the_mask_of_every_layer_and_the_outputs(tmp_path) -> None:
    pruned = nm_prune(lenet(), TWO_FOUR).eval()
    _exported(tmp_path, pruned)
    assert export_nm(pruned, tmp_path, TWO_FOUR) == "export/nm.json"
    description = json.loads((tmp_path / "export" / "nm.json").read_text())
    assert description["pattern"] == "2:4" and description["weights"] == list(sparsifiable_weights(pruned))
    loaded, masks, pattern = load_nm_export(tmp_path)
    assert pattern == TWO_FOUR
    for name, weight in sparsifiable_weights(loaded).items():
        assert max(group_counts_by_loop(masks[name], 4)) <= 2
        assert torch.equal(masks[name], weight != 0)
        assert torch.equal(weight, sparsifiable_weights(pruned)[name])
    inputs = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), pruned(inputs))


def test_an_export_that_breaks_its_pattern_is_refused(tmp_path) -> None:
    dense = lenet().eval()
    with pytest.raises(ExportError, match="more than 2 non-zeros"):
        export_nm(dense, tmp_path, TWO_FOUR)
    pruned = nm_prune(dense, TWO_FOUR)
    _exported(tmp_path, pruned)
    export_nm(pruned, tmp_path, TWO_FOUR)
    # A weight changed outside its mask after the export.
    from safetensors.torch import load_file, save_file

    state_path = tmp_path / "export" / "model.safetensors"
    state = load_file(str(state_path))
    masks = load_file(str(tmp_path / "export" / MASK_FILE))
    name = list(masks)[-1]  # the classifier: Linear, so its mask drops half
    weight = state[name]
    assert not masks[name].all()
    weight[~masks[name]] = 1.0
    save_file(state, str(state_path))
    assert load_exported(tmp_path) is not None
    with pytest.raises(ExportError, match="outside its mask"):
        load_nm_export(tmp_path)


@pytest.mark.skipif(unavailable_reason() is None, reason="checks the record without a sparse-capable GPU")
def test_without_a_gpu_the_semi_structured_row_says_not_measured() -> None:
    model = nm_prune(MLP([64], 4, hidden=(64,)), TWO_FOUR)
    record = compare_semi_structured(model, model, [64])
    assert record["measured"] is False and record["reason"].startswith("not measured")
    with pytest.raises(RuntimeError, match="compute capability 8.0"):
        to_semi_structured(model)
    results = nm_record(TWO_FOUR, model, model, (64,), torch.device("cpu"))
    assert results["nm"]["violations"] == [] and results["nm"]["semi_structured"]["measured"] is False
    assert nm_record(None, model, model, (64,), torch.device("cpu")) == {}


@pytest.mark.gpu
@pytest.mark.skipif(unavailable_reason() is not None, reason=f"semi-structured sparsity: {unavailable_reason()}")
def test_semi_structured_deployment_matches_the_masked_model_on_the_gpu() -> None:
    torch.manual_seed(0)
    dense = MLP([512], 20, hidden=(256, 128))
    masked = nm_prune(dense, TWO_FOUR).eval()
    record = compare_semi_structured(masked, dense, [512], batch_size=256)
    assert record["measured"] is True
    # The 20-way classifier is too narrow for the sparse kernels; it stays dense, with the reason.
    assert set(record["converted"]) >= {"layers.1", "layers.3"}
    assert record["max_abs_difference"] < 5e-2
    assert record["latency_ms"] > 0 and record["dense_latency_ms"] > 0
    deployed, layers = to_semi_structured(masked)
    assert isinstance(deployed.get_submodule(layers["converted"][0]).weight, torch.sparse.SparseSemiStructuredTensor)
