"""``method.teacher_checkpoint`` pointed at a planted file: one error line naming it, nothing run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consparse.compress.export import export_model
from consparse.models.mlp import MLP

from .test_checkpoint_io import plant
from .test_cli import TINY, train


def planted_export(root: Path, marker: Path) -> Path:
    """A genuine export whose model.json is rewritten in the old format to open ``marker``."""
    export_model(MLP([8, 8], 10, hidden=(4,)), root, {}, {"_target_": "consparse.models.mlp.MLP", "input_shape": [8, 8],
                                                          "num_classes": 10, "hidden": [4]})
    path = root / "export" / "model.json"
    description = json.loads(path.read_text())
    description.update(version=1, model_spec={"_target_": "builtins.open", "_args_": [str(marker), "w"]})
    path.write_text(json.dumps(description))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["export", "checkpoint"])
def test_a_planted_teacher_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    if kind == "export":
        named = planted_export(tmp_path / "teacher", marker)
        given = tmp_path / "teacher"
    else:
        named = given = plant(tmp_path / "teacher.ckpt", marker)
    result = train(["method=implicit_lasso", f"method.teacher_checkpoint={given}", f"hydra.run.dir={tmp_path / 'run'}",
                    *TINY], tmp_path, env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("consparse: error: method.teacher_checkpoint:") and str(named) in lines[-1]
    assert "Traceback" not in result.stderr
    assert not marker.exists()
