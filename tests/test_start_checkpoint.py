"""``ckpt_path=<file>``: a new run starts from a given Lightning checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.method_models import method_models

from consparse.errors import ConfigError
from consparse.report.results import read_results
from consparse.train import run

# `evaluation.compression_grid=null` would merge into the grid, not replace it: each kind is emptied.
NO_CURVE = tuple(f"evaluation.compression_grid.{kind}=[]" for kind in ("unstructured", "filter", "lowrank"))


def _epochs_logged(run_dir: Path) -> set[int]:
    lines = (run_dir / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("epoch")
    return {int(float(value)) for line in lines[1:] if (value := line.split(",")[column])}


def test_a_run_starts_from_another_runs_checkpoint(make_config, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    run(make_config("method=dense", *NO_CURVE, output_dir=first))
    checkpoint = first / "checkpoints" / "last.ckpt"
    run(make_config("method=dense", *NO_CURVE, "trainer.max_epochs=2",
                    f"ckpt_path={checkpoint}", output_dir=second))
    assert read_results(second)["epochs"] == 2
    assert _epochs_logged(second) == {1}, "the first epoch came from the checkpoint, only the second was trained"
    assert (second / "checkpoints" / "last.ckpt").exists()


def test_missing_checkpoint_file_is_a_config_error_before_compute(make_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint file") as error:
        run(make_config("method=dense", f"ckpt_path={tmp_path / 'nowhere.ckpt'}"))
    assert error.value.field == "ckpt_path"
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_of_another_model_is_refused_before_training(make_config, tmp_path: Path) -> None:
    first = tmp_path / "first"
    run(make_config("method=l0", *NO_CURVE, output_dir=first))
    with pytest.raises(ConfigError, match="does not fit this method and model") as error:
        run(make_config("method=dense", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"))
    assert error.value.field == "ckpt_path" and "gate.log_alpha" in str(error.value)
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable Lightning checkpoint"):
        run(make_config("method=dense", f"ckpt_path={not_a_checkpoint}", output_dir=tmp_path / "third"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
# dense and l0 start from checkpoints in the tests above.
@pytest.mark.parametrize("method,model", [pair for pair in method_models() if pair[0] not in ("dense", "l0")])
def test_every_method_starts_from_its_own_checkpoint(make_config, tmp_path: Path, method: str, model: str) -> None:
    overrides = ["debug=fast", f"method={method}", f"model={model}"] + (["model.state_size=16"] if model == "implicit" else [])
    first, second = tmp_path / "first", tmp_path / "second"
    run(make_config(*overrides, output_dir=first))
    run(make_config(*overrides, "trainer.max_epochs=2", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
                    output_dir=second))
    assert read_results(second)["status"] == "completed" and read_results(second)["epochs"] == 2
