"""Every W&B sweep in sweeps/ is a valid sweep, and the commands its agent runs start train.py with
the intended Hydra overrides (composed here against conf/, offline, no account).

The schema check mirrors W&B's sweep schema (``config/schema.json`` of the ``sweeps`` package, which
the W&B server validates against) for the parts a sweep here can use. The package itself is not a
dependency: it pins numpy<2, which the torch stack here does not allow.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from consparse.block_job import job_command, plan_of
from consparse.config import instantiate_node, node_name
from consparse.methods import build_method
from consparse.methods.magnitude import resolve_finetune_epochs
from consparse.models import build_model

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
GROUPS = {"method", "model", "dataset", "hardware", "logger", "experiment"}
# What W&B's agent substitutes in `command` (wandb/sdk/launch/sweeps/utils.py, wandb_agent.py).
MACROS = {"${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_no_boolean_flags}",
          "${args_json}", "${args_json_file}", "${args_no_equals}", "${args_append_hydra}", "${args_override_hydra}"}
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metric(_Strict):
    name: str
    goal: Literal["minimize", "maximize"] = "minimize"
    target: float | None = None
    impute: Literal["latest", "best", "worst"] | None = None


class Categorical(_Strict):
    values: list[Any] = Field(min_length=1)
    distribution: Literal["categorical"] = "categorical"


class Constant(_Strict):
    value: Any
    distribution: Literal["constant"] = "constant"


class Ranged(_Strict):
    min: float
    max: float
    distribution: Literal["int_uniform", "uniform", "log_uniform_values", "q_uniform", "q_log_uniform_values"] = (
        "uniform")
    q: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Ranged:
        if self.min >= self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        return self


class Nested(_Strict):
    parameters: dict[str, Categorical | Constant | Ranged | Nested] = Field(min_length=1)


class SweepSpec(_Strict):
    """A W&B sweep config: unknown keys, bad goals, empty or misnamed parameters are errors."""

    method: Literal["grid", "random", "bayes", "custom"]
    parameters: dict[str, Categorical | Constant | Ranged | Nested] = Field(min_length=1)
    program: str | None = None
    command: list[str] | None = None
    metric: Metric | None = None
    name: str | None = None
    description: str | None = None
    project: str | None = None
    entity: str | None = None
    run_cap: int | None = Field(default=None, gt=0)
    early_terminate: dict[str, Any] | None = None

    @field_validator("parameters")
    @classmethod
    def _names(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        bad = [name for name in parameters if not PARAMETER_NAME.match(name)]
        if bad:
            raise ValueError(f"parameter names {bad} do not match {PARAMETER_NAME.pattern}")
        return parameters

    @field_validator("command")
    @classmethod
    def _macros(cls, command: list[str] | None) -> list[str] | None:
        unknown = [part for part in command or [] if part.startswith("${") and part not in MACROS
                   and not part.startswith("${envvar:")]
        if unknown:
            raise ValueError(f"unknown command macros {unknown}; W&B knows {sorted(MACROS)}")
        return command

    @model_validator(mode="after")
    def _grid_is_finite(self) -> SweepSpec:
        if self.method == "grid":
            continuous = [name for name, p in self.parameters.items()
                          if isinstance(p, Ranged) and p.distribution not in ("int_uniform", "q_uniform")]
            if continuous:
                raise ValueError(f"a grid cannot enumerate the continuous parameters {continuous}")
        return self


def load(sweep: Path) -> dict[str, Any]:
    return yaml.safe_load(sweep.read_text())


def grid(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every parameter combination of a grid sweep, as W&B's grid search enumerates them."""
    names = list(spec["parameters"])
    values = [p["values"] if "values" in p else [p["value"]] for p in spec["parameters"].values()]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def covering(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few grid points in which every value of every parameter appears at least once."""
    chosen: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for point in points:
        pairs = {(key, repr(value)) for key, value in point.items()}
        if pairs - seen:
            chosen.append(point)
            seen |= pairs
    return chosen


def agent_command(spec: dict[str, Any], point: dict[str, Any]) -> list[str]:
    """The argv W&B's agent runs for one point: its macro substitution, with its own args formatting."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    variables = create_sweep_command_args({"args": {key: {"value": value} for key, value in point.items()}})
    variables.update(env=["/usr/bin/env"], interpreter=["python"], program=[spec["program"]])
    command: list[str] = []
    for part in spec["command"]:
        command += variables[part[2:-1]] if part.startswith("${") else [part]
    return command


def train_overrides(command: list[str]) -> list[str]:
    """The Hydra overrides train.py gets: directly, or through consparse.block_job's plan."""
    assert command[:2] == ["/usr/bin/env", "python"], command
    if command[2:4] == ["-m", "consparse.block_job"]:
        program, arguments = command[4], command[5:]
        job = job_command(str(REPO / program), arguments, interpreter="python")
        assert job[:2] == ["python", str(REPO / program)]
        command = ["/usr/bin/env", "python", program, *job[2:]]
    assert command[2] == "train.py", "the agent must start train.py"
    return command[3:]


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, "paths.output_dir=/tmp/unused"])


def check_builds(cfg) -> None:
    """Constructors validate their config values: the job would not fail on a bad override at start."""
    info = instantiate_node(cfg.dataset).info
    build_method(cfg.method, build_model(cfg.model, info), info)


def check_point(spec: dict[str, Any], point: dict[str, Any]) -> None:
    overrides = train_overrides(agent_command(spec, point))
    cfg = composed(overrides)
    for key, value in point.items():
        if key in GROUPS:
            assert node_name(cfg[key]) == value, key
        elif key != "job":
            assert OmegaConf.select(cfg, key) == value, key
    assert cfg.logger.wandb is not None, "a W&B sweep's jobs log to W&B (logger=wandb)"
    if "method" in point and cfg.method.name == "magnitude":
        # Without fine-tuning magnitude repeats dense with the same target (tests/methods/test_magnitude.py).
        assert resolve_finetune_epochs(cfg.method.finetune_epochs, cfg.trainer.max_epochs) > 0
    check_builds(cfg)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_sweep_is_a_valid_wandb_sweep(sweep: Path) -> None:
    SweepSpec.model_validate(load(sweep))


# Sweeps over train.py's own keys; the comparison sweeps (a grid over `job`) are tested below.
DIRECT = [sweep for sweep in SWEEPS if "job" not in load(sweep)["parameters"]]


@pytest.mark.parametrize("sweep", DIRECT, ids=lambda p: p.stem)
def test_agent_commands_start_train_with_the_swept_overrides(sweep: Path) -> None:
    spec = load(sweep)
    assert spec["program"] == "train.py" and (REPO / spec["program"]).is_file()
    for point in covering(grid(spec)):
        check_point(spec, point)


@pytest.mark.slow
@pytest.mark.parametrize("sweep", DIRECT, ids=lambda p: p.stem)
def test_every_grid_point_composes(sweep: Path) -> None:
    spec = load(sweep)
    for point in grid(spec):
        check_point(spec, point)


def test_every_comparison_preset_has_a_wandb_sweep() -> None:
    presets = {path.stem for path in (CONF / "experiment").glob("compare_*.yaml")}
    assert presets and presets <= {path.stem for path in SWEEPS}


# One comparison in the fast suite (each plans and composes every block: seconds), the others marked slow.
COMPARISONS = [
    pytest.param(s, marks=() if s.stem == "compare_newsgroups20_text_mlp" else pytest.mark.slow)
    for s in SWEEPS if s.stem.startswith("compare_")
]


@pytest.mark.parametrize("sweep", COMPARISONS, ids=lambda p: p.stem)
def test_comparison_sweep_runs_the_presets_jobs(sweep: Path) -> None:
    """Job n of the W&B grid is job n of `train.py -m experiment=<preset>`: every job, once."""
    spec = load(sweep)
    arguments = [part for part in spec["command"][5:] if not part.startswith("${")]
    assert f"experiment={sweep.stem}" in arguments
    plan = plan_of(CONF, arguments)
    jobs = plan.jobs()
    assert spec["parameters"]["job"]["values"] == list(range(len(jobs)))
    for block in plan.planned:
        n = block.jobs[0]
        overrides = train_overrides(agent_command(spec, {"job": n}))
        assert overrides == jobs[n]
        cfg = composed(overrides)
        for key, values in block.params.items():
            if key.split("@")[-1] in GROUPS or key in GROUPS:
                assert node_name(cfg[key]) == values[0].split("=", 1)[1], key
            elif "@" not in key:
                assert OmegaConf.select(cfg, key) == yaml.safe_load(values[0].split("=", 1)[1]), key
        check_builds(cfg)


def test_block_job_refuses_a_job_beyond_the_plan() -> None:
    from consparse.errors import ConfigError

    with pytest.raises(ConfigError, match=r"job: got '999'; this sweep has jobs 0\.\.80"):
        job_command("train.py", ["experiment=compare_newsgroups20_text_mlp", "job=999"])
    with pytest.raises(ConfigError, match="not a block sweep"):
        job_command("train.py", ["method=dense", "job=0"])
    # A narrowed sweep plans fewer jobs, exactly as the multirun would.
    narrowed = job_command("train.py", ["experiment=compare_newsgroups20_text_mlp", "seed=0", "method=sfw", "job=4"])
    assert narrowed[2:] == ["method=sfw", "method.target_density=0.02", "seed=0",
                            "experiment=compare_newsgroups20_text_mlp", "variant=sfw"]


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ({"paramters": {"seed": {"values": [0]}}}, "paramters"),
        ({"metric": {"name": "test_accuracy", "goal": "maximise"}}, "goal"),
        ({"parameters": {"seed": {"values": []}}}, "values"),
        ({"parameters": {"method target": {"values": [1]}}}, "do not match"),
        ({"parameters": {"lr": {"min": 0.1, "max": 1.0, "distribution": "uniform"}}}, "continuous"),
        ({"parameters": {"lr": {"min": 1.0, "max": 0.1, "distribution": "int_uniform"}}}, "below max"),
        ({"command": ["${env}", "${python}", "${program}"]}, "unknown command macros"),
        ({"method": "grid_search"}, "method"),
    ],
)
def test_schema_check_rejects_what_wandb_rejects(broken: dict[str, Any], problem: str) -> None:
    spec = {**load(REPO / "sweeps" / "dense_magnitude.yaml"), **broken}
    if "paramters" in broken:
        spec.pop("parameters")
    with pytest.raises(ValidationError, match=problem):
        SweepSpec.model_validate(spec)


def test_block_job_entry_point_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "consparse.block_job", str(REPO / "train.py"),
                             "experiment=compare_newsgroups20_text_mlp", "job=99"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "consparse: error: job: got '99'; this sweep has jobs 0..80"
