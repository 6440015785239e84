"""Issue 7's comparison: the block sweeper (consparse.sweeper + its Hydra plugin), the
``experiment=compare_*`` presets, and a tiny compare sweep through the real CLI with its report."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from consparse.report.results import read_results
from consparse.sweeper import (
    DESELECTED,
    PLANNED,
    SKIPPED,
    BlockSweepError,
    SweepPlan,
    plan_sweep,
    read_plan,
    skip_unavailable,
)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TARGETS = ["0.5", "0.2", "0.1", "0.05", "0.02"]
# Issue 7: which methods each setting compares.
PRESETS = {
    "compare_mnist_mlp": ("mnist", "mlp", {"dense", "magnitude", "gmp", "sfw", "l0", "l0_penalty", "implicit_lasso", "implicit_fw"}),
    "compare_fashion_mnist_mlp": ("fashion_mnist", "mlp", {"dense", "magnitude", "gmp", "sfw", "l0", "l0_penalty", "implicit_lasso", "implicit_fw"}),
    "compare_mnist_lenet5": ("mnist", "lenet5", {"dense", "magnitude", "gmp", "sfw", "l0", "l0_penalty", "implicit_lasso"}),
    "compare_newsgroups20_text_mlp": ("newsgroups20", "text_mlp", {"dense", "magnitude", "gmp", "sfw", "l0", "implicit_lasso"}),
}  # fmt: skip
BLOCKS = {
    "dense": {"method": "dense"},
    "l0": {"method": "l0", "method.target_density": "0.5,0.1"},
    "pen": {"method": "l0_penalty", "method.penalty": [0.01, 0.1]},  # a YAML list: one list value
    "fw": {"method": "implicit_fw", "model": "implicit", "method.target_density": "0.5,0.1"},
}


def values(plan: SweepPlan, block: str, key: str) -> list[str]:
    (found,) = [b for b in plan.blocks if b.name == block]
    return [v.split("=", 1)[1] for v in found.params[key]]


# ------------------------------------------------------------------------------ planning
def test_blocks_are_a_union_of_products_launched_seed_major() -> None:
    plan = plan_sweep({"seed": "0,1"}, BLOCKS, ["experiment=x"])
    jobs = plan.jobs()
    assert len(jobs) == 2 * (1 + 2 + 1 + 2)
    assert jobs[0] == ["method=dense", "seed=0", "experiment=x"]
    assert jobs[3] == ["method=l0_penalty", "method.penalty=[0.01,0.1]", "seed=0", "experiment=x"]
    assert jobs[4] == [
        "method=implicit_fw",
        "model=implicit",
        "method.target_density=0.5",
        "seed=0",
        "experiment=x",
    ]
    assert [job[-2] for job in jobs] == ["seed=0"] * 6 + ["seed=1"] * 6  # every block for seed 0 first
    assert {b.name: b.jobs for b in plan.blocks} == {
        "dense": [0, 6],
        "l0": [1, 2, 7, 8],
        "pen": [3, 9],
        "fw": [4, 5, 10, 11],
    }


def test_command_line_selects_replaces_or_extends() -> None:
    args = [
        "method=l0,implicit_fw,sfw",
        "seed=3",
        "method.target_density=0.2",
        "model.state_size=64",
        "trainer.max_epochs=1,2",
    ]
    plan = plan_sweep({"seed": "0,1"}, BLOCKS, args)
    assert {b.name: b.status for b in plan.blocks} == {
        "dense": DESELECTED,
        "l0": PLANNED,
        "pen": DESELECTED,
        "fw": PLANNED,
    }
    assert (
        values(plan, "l0", "method.target_density") == ["0.2"] == values(plan, "fw", "method.target_density")
    )
    assert plan.shared == {"seed": ["seed=3"]}
    # No block sets these: every job gets them (a sweep multiplies every block).
    assert plan.extras == {
        "model.state_size": ["model.state_size=64"],
        "trainer.max_epochs": ["trainer.max_epochs=1", "trainer.max_epochs=2"],
    }
    assert len(plan.jobs()) == 2 * 2
    # A key only some blocks set changes only those.
    plan = plan_sweep(None, BLOCKS, ["method.penalty=choice(0.5)"])
    assert values(plan, "pen", "method.penalty") == ["0.5"] and "method.penalty" not in plan.extras
    assert plan.fixed_keys() == ["method", "method.penalty", "model"]


def test_selecting_among_the_values_a_block_sweeps() -> None:
    plan = plan_sweep(
        None, {"both": {"method": "magnitude,sfw", "method.target_density": "0.1"}}, ["method=sfw"]
    )
    assert values(plan, "both", "method") == ["sfw"]


@pytest.mark.parametrize(
    ("params", "blocks", "args", "match"),
    [
        ({}, {}, [], "hydra.sweeper.blocks: no blocks"),
        ({}, {"a": {}}, [], "hydra.sweeper.blocks.a: an empty block"),
        (
            {"seed": "0,1"},
            {"a": {"method": "dense", "seed": "2"}},
            [],
            r"hydra.sweeper.blocks.a: sets \['seed'\]",
        ),
        ({}, {"a": {"model": "mlp"}}, [], r"hydra.sweeper.blocks.a: lacks \['method'\]"),
        ({}, {"a": {"method": "dense", "lr": "interval(0,1)"}}, [], "only lists and ranges are swept"),
        ({}, {"a": {"method": "dense"}}, ["method=sfw"], "the command line selects no block .* a: dense"),
    ],
)
def test_misconfigured_sweeps_fail_clearly(params: dict, blocks: dict, args: list[str], match: str) -> None:
    with pytest.raises(BlockSweepError, match=match):
        plan_sweep(params, blocks, args)


def test_optional_names_must_be_blocks() -> None:
    with pytest.raises(BlockSweepError, match=r"hydra.sweeper.optional: \['fx'\] are not blocks"):
        plan_sweep(None, BLOCKS, [], optional=["fx"])


def test_unavailable_optional_blocks_are_skipped_others_fail() -> None:
    def compose_job(overrides: list[str]) -> None:
        if "method=implicit_fw" in overrides:
            raise MissingConfigException(
                "In 'config': Could not find 'method/implicit_fw'\n\nAvailable options ..."
            )

    plan = plan_sweep({"seed": "0,1"}, BLOCKS, [])
    skipped = skip_unavailable(plan, compose_job, optional=["fw"])
    assert [b.name for b in skipped] == ["fw"] and skipped[0].status == SKIPPED
    assert skipped[0].reason == "In 'config': Could not find 'method/implicit_fw'"
    assert len(plan.jobs()) == 2 * 4 and skipped[0].jobs == []
    with pytest.raises(MissingConfigException):
        skip_unavailable(plan_sweep(None, BLOCKS, []), compose_job, optional=[])


def test_plan_file_round_trip(tmp_path: Path) -> None:
    plan = plan_sweep({"seed": "0"}, BLOCKS, ["experiment=x"])
    plan.jobs()
    plan.started, plan.finished = "2026-01-01T10:00:00+00:00", "2026-01-01T10:01:30+00:00"
    plan.write(tmp_path)
    written = read_plan(tmp_path)
    assert (
        written["wall_seconds"] == 90.0
        and written["jobs"] == 6
        and written["command_line"] == ["experiment=x"]
    )
    assert written["blocks"][2] == {
        "name": "pen",
        "status": PLANNED,
        "params": {"method": ["l0_penalty"], "method.penalty": ["[0.01,0.1]"]},
        "jobs": [3],
    }
    assert read_plan(tmp_path / "absent") is None


# ------------------------------------------------------------------------------- presets
def compose_preset(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config", overrides=[f"experiment={name}", *overrides], return_hydra_config=True
        )


def method_exists(method: str) -> bool:
    return (CONF / "method" / f"{method}.yaml").is_file()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_sweeps_every_method_at_the_issue_densities(preset: str) -> None:
    dataset, model, methods = PRESETS[preset]
    cfg = compose_preset(preset)
    assert (cfg.dataset.name, cfg.model.name) == (dataset, model)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper)
    assert sweeper["_target_"] == "hydra_plugins.consparse_sweeper.blocks_sweeper.BlocksSweeper"
    plan = plan_sweep(
        sweeper["params"], sweeper["blocks"], [f"experiment={preset}"], optional=sweeper["optional"]
    )
    by_method = {values(plan, b.name, "method")[0]: b.name for b in plan.blocks}
    assert set(by_method) == methods
    assert plan.shared == {"seed": ["seed=0", "seed=1", "seed=2"]}
    for method, block in by_method.items():
        params = next(b.params for b in plan.blocks if b.name == block)
        # The same budget for everyone: no block touches the trainer, the data or the optimiser's schedule.
        assert not [k for k in params if k.split(".")[0] in ("trainer", "dataset", "seed")], (block, params)
        if method in ("dense", "l0_penalty"):
            assert "method.target_density" not in params
        else:
            assert values(plan, block, "method.target_density") == TARGETS
    if "l0_penalty" in by_method:
        assert len(values(plan, by_method["l0_penalty"], "method.penalty")) >= 4
    if "implicit_fw" in by_method:
        assert values(plan, by_method["implicit_fw"], "model") == ["implicit"]
    # The blocks whose methods exist compose (the others are optional until their configs land).
    optional = {name for name in sweeper["optional"]}
    assert {b for m, b in by_method.items() if not method_exists(m)} <= optional

    def compose_job(job: list[str]) -> None:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config_name="config", overrides=job)

    skipped = skip_unavailable(plan, compose_job, optional)
    assert {b.name for b in skipped} == {b for m, b in by_method.items() if not method_exists(m)}


def test_cfg_job_shows_one_composed_job(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=compare_mnist_mlp", "--cfg", "job"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = yaml.safe_load(done.stdout)
    assert job["trainer"]["max_epochs"] == 5 and job["dataset"]["name"] == "mnist"


# ---------------------------------------------------------------------- a tiny real sweep
@pytest.mark.slow
def test_tiny_compare_sweep_through_the_cli(tmp_path: Path) -> None:
    """compare_mnist_mlp on digits, one epoch, two densities, one seed: every method whose config
    exists runs (the implicit ones join by themselves when theirs land), the report compares them."""
    sweep = tmp_path / "sweep"
    args = [
        "-m", "experiment=compare_mnist_mlp", "dataset=digits", "seed=0", "method.target_density=0.5,0.1",
        # Keys only some blocks have are written as sweeps: Hydra applies a single value to the base config first.
        "method.penalty=choice(0.1)", "method.finetune_epochs=choice(0)",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "evaluation.latency.min_run_time=0.02", "evaluation.latency.rounds=1", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    preset = yaml.safe_load((CONF / "experiment" / "compare_mnist_mlp.yaml").read_text())["hydra"]["sweeper"][
        "blocks"
    ]
    available = {name for name, block in preset.items() if method_exists(block["method"])}
    plan = read_plan(sweep)
    assert {b["name"] for b in plan["blocks"] if b["status"] == PLANNED} == available
    assert {b["name"] for b in plan["blocks"] if b["status"] == SKIPPED} == set(preset) - available
    assert plan["wall_seconds"] > 0 and plan["setting"] == {"dataset": "digits", "model": "mlp"}
    targeted = available - {"dense", "l0_penalty"}
    for job in sweep.iterdir():
        if job.name.isdigit():
            results = read_results(job)
            assert results["status"] == "completed", results.get("error")
            assert results["dataset"] == "digits" and results["epochs"] == 1
    jobs = [read_results(job) for job in sweep.iterdir() if job.name.isdigit()]
    assert len(jobs) == plan["jobs"] == 2 * len(targeted) + 2
    assert {(r["method"], r["target_density"]) for r in jobs} >= {
        (m, t) for m in targeted for t in (0.5, 0.1)
    }

    markdown = (sweep / "results.md").read_text()
    assert "## Sweep" in markdown and "`python train.py -m experiment=compare_mnist_mlp" in markdown
    for name in set(preset) - available:
        assert f"**{name}** (In 'config': Could not find 'method/" in markdown
    lines = markdown.splitlines()
    start = lines.index("### Side by side at matched target densities") + 1
    while not lines[start].startswith("|"):
        start += 1
    table = []
    while lines[start].startswith("|"):  # the accuracy matrix: up to the blank line after it
        table.append([c.strip() for c in lines[start].strip("|").split("|")])
        start += 1
    assert table[0] == ["method", "0.5", "0.1"]
    matrix = {cells[0]: cells[1:] for cells in table[2:]}
    # A method on another model (implicit_fw: model=implicit) is compared in the mlp's table, labelled with its model.
    labels = {
        name + (f" (model={preset[name]['model']})" if "model" in preset[name] else "") for name in targeted
    }
    assert set(matrix) == labels | {"dense (pruned without retraining)"}
    assert all(cell != "—" for cells in matrix.values() for cell in cells)
    assert "★" in " ".join(c for cells in matrix.values() for c in cells)
    assert "#### Where methods fall short" in markdown and "- l0_penalty: density" in markdown
    png = (sweep / "pareto.png").read_bytes()
    assert png[:4] == b"\x89PNG" and min(struct.unpack(">II", png[16:24])) > 300
