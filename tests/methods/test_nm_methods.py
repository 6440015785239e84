"""2:4 through the whole run: magnitude with ``nm`` (with and without fine-tuning) and sfw with the nm set
deploy a model that is 2:4 in every layer, export its masks, and say that the GPU row is not measured here."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from consparse.compress.count import sparsifiable_weights
from consparse.compress.nm import load_nm_export
from consparse.errors import ConfigError
from consparse.evaluate_run import evaluate
from consparse.nm_pattern import NMPattern
from consparse.train import run

TWO_FOUR = NMPattern(2, 4)
QUICK = ("trainer.max_epochs=2", "evaluation.compression_grid.unstructured=[]", "evaluation.compression_grid.lowrank=[]",
         "evaluation.compression_grid.nm=[2:4,1:4]")


def _every_layer_is_two_four(run_dir) -> dict[str, torch.Tensor]:
    model, masks, pattern = load_nm_export(run_dir)
    assert pattern == TWO_FOUR
    for name, weight in sparsifiable_weights(model).items():
        assert TWO_FOUR.holds_for(weight) and TWO_FOUR.holds_for(masks[name]), name
        assert torch.equal(masks[name], weight != 0)
    return masks


@pytest.mark.parametrize("finetune", [0, 1])
def test_magnitude_nm_deploys_two_four_in_every_layer(make_config, tmp_path, finetune) -> None:
    results = run(make_config("method=magnitude", "method.nm=2:4", "method.target_density=null",
                              f"method.finetune_epochs={finetune}", *QUICK, output_dir=tmp_path / "run"))
    assert results["target_density"] == 0.5
    assert results["density"] == pytest.approx(0.5, abs=0.01)
    assert results["method_metrics"]["nm"] == "2:4"
    assert results["nm"]["violations"] == []
    assert results["nm"]["semi_structured"]["reason"].startswith("not measured")
    masks = _every_layer_is_two_four(tmp_path / "run")
    assert all(0.45 <= float(mask.float().mean()) <= 0.55 for mask in masks.values())
    two_four = next(p for p in results["compression_curve"] if p.get("pattern") == "2:4")
    # The deployed model is 2:4 already: pruning it to 2:4 again changes nothing.
    assert two_four["test_accuracy"] == results["test_accuracy"]
    if finetune:
        return
    # eval.py measures the export again, N:M block included (its pattern read from export/nm.json).
    config = make_config("method=magnitude", "method.nm=2:4", "method.target_density=null",
                         f"method.finetune_epochs={finetune}", *QUICK, output_dir=tmp_path / "run")
    (tmp_path / "run" / ".hydra").mkdir()
    OmegaConf.save(config, tmp_path / "run" / ".hydra" / "config.yaml")
    again, _ = evaluate(tmp_path / "run", [])
    assert again["nm"] == results["nm"] and again["test_accuracy"] == results["test_accuracy"]


def test_sfw_with_the_nm_set_deploys_two_four(make_config, tmp_path) -> None:
    results = run(make_config("method=sfw", "method.constraint.kind=nm", "method.constraint.nm=2:4",
                              "method.target_density=null", *QUICK, output_dir=tmp_path / "run"))
    assert results["target_density"] == 0.5
    assert results["method_metrics"]["nm"] == "2:4"
    sets = results["method_metrics"]["constraints"]
    assert {entry["set"] for name, entry in sets.items() if name.endswith("weight")} == {"nm"}
    _every_layer_is_two_four(tmp_path / "run")


@pytest.mark.parametrize(
    "overrides",
    [
        ("method=magnitude", "method.nm=2:4", "method.target_density=0.1"),
        ("method=sfw", "method.constraint.kind=nm", "method.target_density=0.1"),
    ],
)
def test_a_target_density_other_than_n_over_m_is_refused(make_config, tmp_path, overrides) -> None:
    with pytest.raises(ConfigError, match=r"method.target_density: 0.1 disagrees .* set method.target_density=0.5 or null"):
        run(make_config(*overrides, output_dir=tmp_path / "run"))
