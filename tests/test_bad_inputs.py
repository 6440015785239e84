"""Bad run-level values: one line naming the key, exit status 2, no traceback, nothing overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import consparse.train
from consparse.errors import ConfigError
from consparse.report.results import read_results
from consparse.run_config import check_devices, check_optimizer, check_run_config
from consparse.run_dir import make_run_dir

from .test_cli import TINY, train

# (override, key the error names, words of the message)
CASES = [
    ("seed=-1", "seed", "got -1; allowed: [0, 4294967295]"),
    ("seed=abc", "seed", "expected an integer, got 'abc'"),
    ("seed=1.5", "seed", "expected an integer, got 1.5"),
    ("method.optimizer.lr=-0.1", "method.optimizer.lr", "got -0.1; allowed: > 0.0"),
    ("method.optimizer.momentum=-1", "method.optimizer.momentum", "Invalid momentum value"),
    ("trainer.devices=0", "trainer.devices", "got 0; allowed: 'auto', a device count >= 1"),
]


@pytest.mark.parametrize(("override", "key", "words"), CASES)
def test_a_bad_run_value_is_a_config_error(make_config, override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ": ") as caught:
        check_run_config(make_config("method=dense", override))
    assert words in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("devices", ["auto", 1, 4, -1, "2", "0,1", [0], [1, 3]])
def test_valid_devices_pass(devices: object) -> None:
    check_devices(devices)


@pytest.mark.parametrize("devices", [0, -2, True, "", "0", "two", [], [-1], [0.5], 1.5])
def test_invalid_devices_are_refused(devices: object) -> None:
    with pytest.raises(ConfigError, match="^trainer.devices: "):
        check_devices(devices)


def test_an_optimizer_argument_torch_refuses_names_its_key() -> None:
    node = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.1, "betas": [0.9, 1.5]})
    with pytest.raises(ConfigError, match=r"^method\.optimizer\.betas: torch.optim.Adam refuses it"):
        check_optimizer("method.optimizer", node)


def test_a_model_an_export_cannot_describe_fails_before_training(make_config) -> None:
    cfg = make_config("method=dense", "model._target_=torch.nn.Identity")
    with pytest.raises(ConfigError, match=r"^model: the model 'torch.nn.Identity' is not a registered architecture"):
        check_run_config(cfg)
    check_run_config(make_config("method=dense", "model._target_=torch.nn.Identity", "evaluation.export=false"))


def test_a_nesterov_refusal_names_nesterov(make_config) -> None:
    with pytest.raises(ConfigError, match=r"^method\.optimizer\.nesterov: torch.optim.SGD refuses it"):
        check_run_config(make_config("method=dense", "method.optimizer.nesterov=true", "method.optimizer.momentum=0"))


def test_every_shipped_method_and_preset_passes(make_config) -> None:
    conf = Path(__file__).resolve().parents[1] / "conf"
    for group in ("method", "model", "experiment", "hardware"):
        for path in sorted((conf / group).glob("[!_]*.yaml")):  # "_*": bases other configs include
            if group == "model" and path.stem in NOT_EXPORTABLE_MODELS:
                with pytest.raises(ConfigError, match=r"^model: .*not a registered architecture.*evaluation\.export=false"):
                    check_run_config(make_config(f"model={path.stem}"))
                continue
            check_run_config(make_config(f"{group}={path.stem}"))


# Models the export cannot describe as data: their runs need evaluation.export=false (their presets set it).
NOT_EXPORTABLE_MODELS = {"distilbert"}


def test_a_run_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"^hydra\.run\.dir: cannot create the run directory .*a_file/run \(Not a directory\)"):
        make_run_dir(tmp_path / "a_file" / "run")


def test_a_wrong_length_layerwise_target_is_recorded_as_json(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=l0", "method.target_density=[0.5,0.5]")
    with pytest.raises(ConfigError, match=r"^method\.target_density: got 2 values but there are 3 gated layers"):
        consparse.train.run(cfg)
    failure = read_results(tmp_path / "run")
    assert failure["status"] == "failed" and failure["target_density"] == [0.5, 0.5]
    assert "method.target_density" in failure["error"] and failure["traceback"] is None


@pytest.mark.slow
@pytest.mark.parametrize(("override", "key", "words"), CASES)
def test_a_bad_run_value_through_the_cli_touches_nothing(tmp_path: Path, override: str, key: str, words: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"status": "completed"}\n')
    result = train(["method=dense", override, f"hydra.run.dir={run_dir}", *TINY], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"consparse: error: {key}: " + result.stderr.split(f"{key}: ", 1)[1].strip()]
    assert words in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in run_dir.iterdir()] == ["results.json"]
    assert (run_dir / "results.json").read_text() == '{"status": "completed"}\n'


@pytest.mark.slow
def test_an_unwritable_run_dir_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    result = train([f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", *TINY], tmp_path)
    assert result.returncode == 2
    expected = (
        f"consparse: error: hydra.run.dir: cannot create the run directory {tmp_path / 'a_file' / 'run'} "
        "(Not a directory); choose a directory you can write"
    )
    assert result.stderr.strip().splitlines() == [expected]


@pytest.mark.slow
def test_a_wrong_length_target_in_a_multirun_is_reported(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = train(["-m", "method=l0", "method.target_density=[0.5,0.5]", f"hydra.sweep.dir={sweep}", *TINY], tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    failed = read_results(sweep / "0")
    assert failed["status"] == "failed" and failed["target_density"] == [0.5, 0.5]
    assert "Failed" in (sweep / "results.md").read_text()
