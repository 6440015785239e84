"""method=magnitude's default fine-tunes, so it never silently repeats method=dense with a target."""

from __future__ import annotations

import logging

import pytest
import torch

from consparse.compress.export import load_exported
from consparse.methods.magnitude import resolve_finetune_epochs
from consparse.train import run


@pytest.mark.parametrize(("requested", "max_epochs", "expected"), [(None, 10, 5), (None, 5, 2), (None, 1, 0), (3, 10, 3),
                                                                     (0, 10, 0)])
def test_default_fine_tunes_the_second_half(requested, max_epochs, expected) -> None:
    assert resolve_finetune_epochs(requested, max_epochs) == expected


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_exported(run_dir).state_dict()


def test_default_magnitude_differs_from_dense_and_zero_finetuning_is_dense(make_config, tmp_path, caplog) -> None:
    common = ("method.target_density=0.3", "trainer.max_epochs=2", "evaluation.compression_grid.unstructured=[]",
              "evaluation.compression_grid.lowrank=[]")
    dense = run(make_config("method=dense", *common, output_dir=tmp_path / "dense"))
    default = run(make_config("method=magnitude", *common, output_dir=tmp_path / "magnitude"))
    with caplog.at_level(logging.WARNING, logger="consparse.methods.magnitude"):
        one_shot = run(make_config("method=magnitude", "method.finetune_epochs=0", *common,
                                   output_dir=tmp_path / "one_shot"))
    assert default["method_metrics"]["finetune_epochs"] == 1
    assert dense["density"] == default["density"] == one_shot["density"] == pytest.approx(0.3, abs=0.01)
    dense_weights, default_weights, one_shot_weights = (
        _weights(tmp_path / name) for name in ("dense", "magnitude", "one_shot"))
    assert any(not torch.equal(dense_weights[key], default_weights[key]) for key in dense_weights)
    # Without fine-tuning, magnitude is dense with a target, weight for weight; it says so.
    assert all(torch.equal(dense_weights[key], one_shot_weights[key]) for key in dense_weights)
    assert "the same experiment as method=dense" in caplog.text
