"""The ``experiment=compare_*`` presets (block sweeps, consparse.sweeper) and a tiny compare sweep
through the real CLI with its report; the planning itself is tested in test_sweeper.py."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tests.tiny_sweep import run_tiny_sweep

from consparse.report.results import read_results
from consparse.sweeper import SweepPlan, plan_sweep, skip_unavailable

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TARGETS = ["0.5", "0.2", "0.1", "0.05", "0.02"]
# The blocks that claim fewer targets, each explained in its preset.
CLAIMED = {
    ("compare_newsgroups20_text_mlp", "implicit_lasso"): ["0.1", "0.05", "0.02"],
    ("compare_newsgroups20_text_mlp", "implicit_lasso_finetune"): ["0.1", "0.05", "0.02"],
}
# The blocks that keep an earlier configuration of theirs, as they ran, each explained in its preset.
KEPT_AS_RUN = {
    ("compare_newsgroups20_text_mlp", "implicit_lasso_finetune"): {"method.finetune_regrow": 0.0, "method.readout.mode": "lstsq"},
}
# Which methods each setting compares.
PRESETS = {
    "compare_mnist_mlp": ("mnist", "mlp", {"dense", "magnitude", "gmp", "sfw", "l0", "l0_penalty", "implicit_lasso", "implicit_fw"}),
    "compare_fashion_mnist_mlp": ("fashion_mnist", "mlp", {"dense", "magnitude", "gmp", "sfw", "l0", "l0_penalty", "implicit_lasso", "implicit_fw"}),
    "compare_mnist_lenet5": ("mnist", "lenet5", {"dense", "magnitude", "gmp", "sfw", "l0", "l0_penalty", "implicit_lasso"}),
    "compare_newsgroups20_text_mlp": ("newsgroups20", "text_mlp", {"dense", "magnitude", "gmp", "sfw", "l0", "implicit_lasso"}),
}  # fmt: skip


def values(plan: SweepPlan, block: str, key: str) -> list[str]:
    (found,) = [b for b in plan.blocks if b.name == block]
    return [v.split("=", 1)[1] for v in found.params[key]]


# ------------------------------------------------------------------------------- presets
def compose_preset(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config", overrides=[f"experiment={name}", *overrides], return_hydra_config=True
        )


def preset_plan(name: str, sweeper: dict | None = None) -> SweepPlan:
    sweeper = sweeper or OmegaConf.to_container(compose_preset(name).hydra.sweeper)
    return plan_sweep(sweeper["params"], sweeper["blocks"], [f"experiment={name}"], optional=sweeper["optional"])


def method_exists(method: str) -> bool:
    return (CONF / "method" / f"{method}.yaml").is_file()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_sweeps_every_method_at_the_issue_densities(preset: str) -> None:
    dataset, model, methods = PRESETS[preset]
    cfg = compose_preset(preset)
    assert (cfg.dataset.name, cfg.model.name) == (dataset, model)
    # Every job says which comparison it belongs to, and whose table its runs of another model join.
    assert OmegaConf.to_container(cfg.setting) == {"name": preset, "model": model}
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper)
    assert sweeper["_target_"] == "hydra_plugins.consparse_sweeper.blocks_sweeper.BlocksSweeper"
    plan = preset_plan(preset, sweeper)
    by_method = {values(plan, b.name, "method")[0]: b.name for b in plan.blocks}
    assert set(by_method) == methods
    assert plan.shared == {"seed": ["seed=0", "seed=1", "seed=2"]}
    for block, params in ((b.name, b.params) for b in plan.blocks):
        method = values(plan, block, "method")[0]
        # The same budget for everyone: no block touches the trainer, the data or the optimiser's schedule.
        assert not [k for k in params if k.split(".")[0] in ("trainer", "dataset", "seed")], (block, params)
        if method in ("dense", "l0_penalty"):
            assert "method.target_density" not in params
        else:
            assert values(plan, block, "method.target_density") == CLAIMED.get((preset, block), TARGETS)
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


def test_l0_takes_its_one_default_dual_step_in_every_setting() -> None:
    for preset in PRESETS:
        l0 = next(b for b in preset_plan(preset).blocks if b.name == "l0")
        assert "method.dual_lr" not in l0.params, preset
    assert compose_preset("compare_newsgroups20_text_mlp", "method=l0").method.dual_lr == pytest.approx(3e-5)


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
    run_tiny_sweep(
        tmp_path, sweep, "seed=0", "method.target_density=0.5,0.1",
        # Keys only some blocks have are written as sweeps: Hydra applies a single value to the base config first.
        "method.penalty=choice(0.1)", "method.finetune_epochs=choice(0)",
        # Every block at its default, as without tuning (the tuned phases: test_tuned_sweep.py).
        "hydra.sweeper.tune=null",
    )  # fmt: skip

    preset = OmegaConf.to_container(compose_preset("compare_mnist_mlp").hydra.sweeper.blocks)
    available = {name for name, block in preset.items() if method_exists(block["method"])}
    targeted = available - {"dense", "l0_penalty"}
    jobs = [read_results(job) for job in sweep.iterdir() if job.name.isdigit()]
    for results in jobs:
        assert results["status"] == "completed", results.get("error")
        assert results["dataset"] == "digits" and results["epochs"] == 1
        # What the run belongs to, in its own results: the report reads nothing else.
        assert results["setting"] == {"name": "compare_mnist_mlp", "model": "mlp"}
        # The variant is the block; a block runs its method (implicit_lasso_finetune runs implicit_lasso).
        assert preset[results["variant"]]["method"] == results["method"]
        assert f"variant={results['variant']}" in results["overrides"]
        assert results["method_config"]["name"] == results["method"]
        assert "tuning" not in results and not any(o.startswith("tuning") for o in results["overrides"])
    assert {r["variant"] for r in jobs} == available and len(jobs) == 2 * len(targeted) + 2
    assert {(r["variant"], r["target_density"]) for r in jobs} >= {
        (m, t) for m in targeted for t in (0.5, 0.1)
    }

    markdown = (sweep / "results.md").read_text()
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
    # A block named apart from its method (implicit_lasso_finetune) is labelled "<method> (<block>)".
    labels = {
        preset[name]["method"] + (f" ({name})" if preset[name]["method"] != name else "")
        + (f" (model={preset[name]['model']})" if "model" in preset[name] else "") for name in targeted
    }
    assert set(matrix) == labels | {"dense (pruned without retraining)"}
    assert all(cell != "—" for cells in matrix.values() for cell in cells)
    assert "★" in " ".join(c for cells in matrix.values() for c in cells)
    assert "#### Where methods fall short" in markdown and "- l0_penalty: density" in markdown
    png = (sweep / "pareto.png").read_bytes()
    assert png[:4] == b"\x89PNG" and min(struct.unpack(">II", png[16:24])) > 300


# ------------------------------------------------------------------ one shared block list
def test_every_compare_block_comes_from_the_shared_list() -> None:
    """The settings add knobs to the blocks of _compare.yaml or leave blocks out (null); none defines
    a block of its own or changes what a shared block sets (but for the fewer targets a block may
    claim, CLAIMED, and the earlier configuration a block keeps, KEPT_AS_RUN), and the launch order
    is the list's."""
    shared = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / "_compare.yaml").hydra.sweeper.blocks)
    for preset in PRESETS:
        blocks = OmegaConf.to_container(compose_preset(preset).hydra.sweeper.blocks)
        assert list(blocks) == list(shared), preset
        for name, block in blocks.items():
            if block is None:
                continue
            expected = dict(shared[name])
            if (preset, name) in CLAIMED:
                claimed = block.pop("method.target_density")
                assert set(claimed.split(",")) < set(expected.pop("method.target_density").split(","))
            for key, value in KEPT_AS_RUN.get((preset, name), {}).items():
                assert block.pop(key) == value and expected.pop(key) != value, (preset, name, key)
            assert block.items() >= expected.items(), (preset, name)

