"""A sample of bad values, one per way a key name is put together (the node's own argument, a
nested sub-node, an argument from another node, a settings node, a hook after the boundary): each
is refused before any compute in exactly the one line users saw before the key names moved to the
boundary (the expected lines were taken from the code where library modules named full keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

import consparse.train
from consparse.errors import ConfigError, ParameterError

from .test_cli import TINY, train

KINDS = "'l1', 'l2', 'linf', 'ksparse', 'ksupport', 'group_ksupport', 'nuclear', 'spectral_ksupport', 'nm'"
# (overrides, the exact line train.py prints)
CASES = [
    (["method=l0", "method.dual_lr=-1"], "method.dual_lr: got -1; allowed: > 0.0"),
    (["method=sfw", "method.constraint.value=0"], "method.constraint.value: got 0; allowed: > 0.0"),
    (["method=sfw", "method.constraint.kind=l7"], f"method.constraint.kind: got 'l7'; allowed: {KINDS}"),
    (["method=sfw", "method.optimizer.momentum=1.5"], "method.optimizer.momentum: got 1.5; allowed: [0.0, 1.0)"),
    (["method=implicit_fw", "model=implicit", "method.constraints.A.kind=ksparse"],
     ("method.constraints.A.kind: got 'ksparse'; rows of A must lie in L1 balls (||A||_inf <= kappa is what makes "
      "every iterate well-posed)")),
    (["method=implicit_fw", "model=implicit", "method.seed.scale=2"], "method.seed.scale: got 2; allowed: (0.0, 1.0]"),
    (["method=implicit_lasso", "method.solver.max_rounds=0"], "method.solver.max_rounds: got 0; allowed: >= 1"),
    (["method=implicit_lasso", "method.readout.ridge=2"], "method.readout.ridge: got 2; allowed: [0.0, 1.0]"),
    (["method=implicit_lasso", "method.formulation=implicit", "model=lenet5", "dataset.image_size=28"],
     ("model: implicit conversion needs a Linear/ReLU chain (mlp, text_mlp); module 'layers.0' (Conv2d) does not "
      "fit. Conv nets use layer-wise state matching.")),
    (["method=dense", "dataset.batch_size=0"], "dataset.batch_size: got 0; allowed: >= 1"),
    (["method=dense", "model.hidden=[0]"], "model.hidden: got [0]; every width must be >= 1"),
    (["method=dense", "hardware.num_workers=-1"], "hardware.num_workers: got -1; allowed: >= 0"),
    (["method=dense", "evaluation.latency.threads=0"], "evaluation.latency.threads: got 0; allowed: >= 1"),
    (["method=gmp", "method.prune_scope=row"], "method.prune_scope: got 'row'; allowed: 'global', 'layer'"),
]
IDS = [" ".join(overrides) for overrides, _ in CASES]


@pytest.mark.parametrize(("overrides", "line"), CASES, ids=IDS)
def test_a_bad_value_is_refused_with_its_full_key(make_config, tmp_path: Path, overrides: list[str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        consparse.train.run(make_config(*overrides))
    assert str(caught.value) == line
    assert not isinstance(caught.value, ParameterError)  # every key was completed at the boundary
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_unknown_method_key_is_refused_at_the_boundary(make_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        consparse.train.run(make_config("method=l0", "+method.dual_rate=0.1"))
    assert caught.value.field == "method"
    assert caught.value.message.startswith("unknown keys ['dual_rate']; allowed: ")
    assert "dual_lr" in caught.value.message


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "line"), CASES, ids=IDS)
def test_a_bad_value_through_train_py_prints_one_line(tmp_path: Path, overrides: list[str], line: str) -> None:
    result = train([*overrides, f"hydra.run.dir={tmp_path / 'run'}", *TINY], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"consparse: error: {line}"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
