"""A tuned block sweep (consparse.tuned_sweep): the grid of each block, the search and final phases,
the choice on validation accuracy, and one tiny real sweep through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from tests.tiny_sweep import run_tiny_sweep

from consparse.report.results import read_results
from consparse.sweeper import BlockSweepError, plan_sweep, skip_unavailable
from consparse.tuned_sweep import TuneConfig, parse_tune, plan_tuning
from consparse.tuning import FINAL, SEARCH, GridPoint

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TUNE = {"key": "method.optimizer.lr", "factors": [0.3333333, 1.0, 3.0]}
BLOCKS = {
    "dense": {"method": "dense"},
    "l0": {"method": "l0", "method.target_density": "0.5,0.1"},
    "fixed": {"method": "sfw", "method.optimizer.lr": 0.5},  # a block that sets the key: its centre
}
DEFAULTS = {"dense": 0.05, "l0": 0.003, "sfw": 1.0}


def fake_compose(job: list[str], val_fraction: float = 0.1) -> OmegaConf:
    """The composed config as far as tuning reads it: the method's default lr unless the job sets one."""
    overrides = dict(o.split("=", 1) for o in job)
    lr = float(overrides.get("method.optimizer.lr", DEFAULTS.get(overrides["method"], 0)))
    return OmegaConf.create({"method": {"optimizer": {"lr": lr or None}}, "dataset": {"val_fraction": val_fraction}})


def tuned(args: list[str] = (), blocks: dict = BLOCKS, params: dict | None = None, **compose_kwargs):
    plan = plan_sweep(params or {"seed": "0,1,2"}, blocks, list(args))
    return plan_tuning(plan, parse_tune(TUNE), lambda job: fake_compose(job, **compose_kwargs))


# ------------------------------------------------------------------------------ planning
def test_each_block_searches_its_own_grid_on_the_first_seed_then_runs_the_rest_at_its_choice() -> None:
    plan = tuned(["trainer.max_epochs=1"])
    assert {name: [p.value for p in points] for name, points in plan.grids.items()} == {
        "dense": [0.0166667, 0.05, 0.15], "l0": [0.001, 0.003, 0.009], "fixed": [0.166667, 0.5, 1.5],
    }  # fmt: skip
    search = plan.search_jobs()
    # One grid of the same size per block and combination of its own sweep (l0: two targets), seed 0 only.
    assert [(job.block, job.point.factor) for job in search] == [
        (b, f) for b, n in (("dense", 1), ("l0", 2), ("fixed", 1)) for _ in range(n) for f in TUNE["factors"]
    ]
    assert all("seed=0" in job.overrides and job.tuning["phase"] == SEARCH for job in search)
    first = search[3].overrides
    assert first[:5] == ["method=l0", "method.target_density=0.5", "seed=0", "trainer.max_epochs=1", "variant=l0"]
    assert first[5:] == [
        "method.optimizer.lr=0.001",
        ("tuning={key:method.optimizer.lr,phase:search,value:0.001,factor:0.3333333,grid:[0.001,0.003,0.009],"
        "factors:[0.3333333,1.0,3.0]}"),
    ]
    # The block's own setting of the key became its centre and left its product: set once per job.
    assert all(sum(o.startswith("method.optimizer.lr=") for o in job.overrides) == 1 for job in search)

    chosen = {"dense": plan.grids["dense"][2], "l0": plan.grids["l0"][0], "fixed": plan.grids["fixed"][1]}
    final = plan.final_jobs(chosen)
    assert [(job.block, job.point.value, job.tuning["phase"]) for job in final] == [
        (b, v, FINAL) for seed in (1, 2) for b, v, n in (("dense", 0.15, 1), ("l0", 0.001, 2), ("fixed", 0.5, 1))
        for _ in range(n)
    ]  # fmt: skip
    assert [o for o in final[0].overrides if o.startswith("seed=")] == ["seed=1"]
    assert final[1].tuning == {"key": "method.optimizer.lr", "phase": "final", "value": 0.001, "factor": 0.3333333,
                               "grid": [0.001, 0.003, 0.009], "factors": [0.3333333, 1.0, 3.0]}  # fmt: skip


def test_the_command_line_narrows_a_tuned_sweep() -> None:
    only_first = tuned(["seed=0", "method=l0", "method.target_density=0.2"])
    assert [job.block for job in only_first.search_jobs()] == ["l0"] * 3
    assert only_first.final_jobs({"l0": GridPoint(0.003, 1.0)}) == []
    # A value of the key on the command line centres the grids on it: of every block where no block
    # sets the key, else of the blocks that set it (the block sweeper's rule for such keys).
    unset = {name: block for name, block in BLOCKS.items() if name != "fixed"}
    centred = tuned(["method.optimizer.lr=0.02"], blocks=unset)
    assert {name: points[1].value for name, points in centred.grids.items()} == {"dense": 0.02, "l0": 0.02}
    assert "method.optimizer.lr" not in centred.plan.extras
    centred = tuned(["method.optimizer.lr=0.02"])
    assert {name: points[1].value for name, points in centred.grids.items()} == {"dense": 0.05, "l0": 0.003, "fixed": 0.02}


@pytest.mark.parametrize(
    ("tune", "match"),
    [
        ({"key": "method.optimizer.lr"}, r"hydra.sweeper.tune: got .*give \{key"),
        ({"key": "", "factors": [1.0]}, "hydra.sweeper.tune.key: got ''"),
        ({"key": "tuning.value", "factors": [1.0]}, "hydra.sweeper.tune.key: got 'tuning.value'"),
        ({"key": "method.optimizer.lr", "factors": []}, r"hydra.sweeper.tune.factors: got \[\]"),
        ({"key": "method.optimizer.lr", "factors": [1.0, -3.0]}, "distinct positive numbers"),
        ({"key": "method.optimizer.lr", "factors": [1.0, 1.0]}, "distinct positive numbers"),
        ({"key": "method.optimizer.lr", "factors": "1,3"}, "hydra.sweeper.tune.factors"),
    ],
)
def test_a_bad_tune_config_names_its_key(tune: dict, match: str) -> None:
    with pytest.raises(BlockSweepError, match=match) as raised:
        parse_tune(tune)
    assert "\n" not in str(raised.value)


def test_what_tuning_cannot_choose_is_refused_before_launching() -> None:
    tune = TuneConfig("method.optimizer.lr", (1.0, 3.0))
    with pytest.raises(BlockSweepError, match="hydra.sweeper.tune.key: method.optimizer.lr is swept by the command line"):
        plan_tuning(plan_sweep(None, {"dense": BLOCKS["dense"]}, ["method.optimizer.lr=0.1,0.2"]), tune, fake_compose)
    swept = {**BLOCKS, "fixed": {"method": "sfw", "method.optimizer.lr": "0.1,0.2"}}
    with pytest.raises(BlockSweepError, match="is swept by fixed"):
        plan_tuning(plan_sweep(None, swept, []), tune, fake_compose)
    with pytest.raises(BlockSweepError, match="method.optimizer.lr is None in block other"):
        plan_tuning(plan_sweep(None, {"other": {"method": "implicit_lasso"}}, []), tune, fake_compose)
    with pytest.raises(BlockSweepError, match="block dense holds out no validation split"):
        plan_tuning(plan_sweep(None, BLOCKS, []), tune, lambda job: fake_compose(job, val_fraction=0.0))
    with pytest.raises(BlockSweepError, match="tuning is set by the tuned sweep"):
        plan_tuning(plan_sweep(None, BLOCKS, ["tuning.value=1"]), tune, fake_compose)
    assert parse_tune(None) is None


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("compare_*.yaml")))
def test_every_compare_block_has_a_learning_rate_to_tune(preset: str) -> None:
    """The real presets: the same 3-value budget everywhere, every block's default lr is found, and a
    search job composes with its tuning."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
        sweeper = OmegaConf.to_container(cfg.hydra.sweeper)
        assert sweeper["tune"] == TUNE
        plan = plan_sweep(sweeper["params"], sweeper["blocks"], [f"experiment={preset}"], optional=sweeper["optional"])

        def compose_job(job: list[str]):
            return compose(config_name="config", overrides=job)

        skip_unavailable(plan, compose_job, sweeper["optional"])
        jobs = plan.jobs()
        untuned_sfw = compose_job(jobs[next(b.jobs[0] for b in plan.planned if b.name == "sfw")])
        tuned_plan = plan_tuning(plan, parse_tune(sweeper["tune"]), compose_job)
        # Every method of the comparison (implicit_lasso: the teacher's training), a grid of 3 each.
        assert {name: len(points) for name, points in tuned_plan.grids.items()} == {
            name: 3 for name, block in sweeper["blocks"].items() if block is not None
        }
        # Centred on what the block runs untuned (sfw's 0.03 on 20 Newsgroups, its default elsewhere).
        assert tuned_plan.grids["sfw"][1].value == untuned_sfw.method.optimizer.lr
        job = next(job for job in tuned_plan.search_jobs() if job.block == "l0")
        cfg = compose_job(job.overrides)
    assert cfg.method.optimizer.lr == job.point.value == cfg.tuning.value
    assert OmegaConf.to_container(cfg.tuning) == job.tuning


def test_a_search_job_without_results_counts_as_a_failure(tmp_path: Path) -> None:
    from hydra_plugins.consparse_sweeper.blocks_sweeper import _record

    plan = tuned(params={"seed": "0"})
    job = plan.search_jobs()[0]
    result = JobReturn(
        overrides=job.overrides, cfg=OmegaConf.create({"setting": {"name": "compare_x", "model": "mlp"}}),
        hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}}), status=JobStatus.COMPLETED,
    )  # fmt: skip
    record = _record(job, result)
    assert record == {"status": "missing", "variant": "dense", "setting": {"name": "compare_x", "model": "mlp"},
                      "tuning": job.tuning}  # fmt: skip


# ---------------------------------------------------------------------- a tiny real sweep
def search_ranks(jobs: list[dict], variant: str) -> dict[float, tuple[int, float]]:
    """Per searched value, worked out by hand from the files: (minus the runs that missed their target
    by more than 5 %, mean validation accuracy of the others)."""
    values: dict[float, list[dict]] = {}
    for r in jobs:
        if r["variant"] == variant and r["tuning"]["phase"] == SEARCH:
            values.setdefault(r["tuning"]["value"], []).append(r)
    ranks = {}
    for value, runs in values.items():
        kept = [r for r in runs if r["target_density"] is None or r["density"] <= r["target_density"] * 1.05]
        mean = sum(r["val_accuracy"] for r in kept) / len(kept) if kept else -math.inf
        ranks[value] = (len(kept) - len(runs), mean)
    return ranks


@pytest.mark.slow
def test_a_tiny_tuned_sweep_runs_the_later_seeds_at_the_best_validation_value(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = run_tiny_sweep(tmp_path, sweep, "seed=0,1", "method=dense,l0", "method.target_density=0.5,0.1")
    jobs = {int(job.name): read_results(job) for job in sweep.iterdir() if job.name.isdigit()}
    # Search: seed 0, dense x 3 values, l0 x 2 targets x 3 values; final: seed 1 at one value per block.
    assert len(jobs) == 3 + 6 + 1 + 2
    search = [jobs[n] for n in range(9)]
    final = [jobs[n] for n in range(9, 12)]
    assert all(r["tuning"]["phase"] == SEARCH and r["seed"] == 0 for r in search)
    assert all(r["tuning"]["phase"] == FINAL and r["seed"] == 1 for r in final)
    for variant, default in (("dense", 0.05), ("l0", 0.003)):
        ranks = search_ranks(list(jobs.values()), variant)
        assert sorted(ranks) == pytest.approx([default / 3, default, 3 * default], rel=1e-5)
        # Equal ranks go to the value nearest the default, as the protocol says.
        best = max(ranks, key=lambda value: (*ranks[value], -abs(math.log(value / default))))
        used = {r["tuning"]["value"] for r in final if r["variant"] == variant}
        assert used == {best}, (variant, ranks)
        assert all(r["method_config"]["optimizer"]["lr"] == best for r in final if r["variant"] == variant)
        assert f"tuning {variant}: method.optimizer.lr in" in done.stdout + done.stderr
        # The report recomputes the choice from the files and agrees with what the sweeper launched.
        choices = pd.read_csv(sweep / "tuning.csv")
        assert choices[(choices["variant"] == variant) & choices["chosen"]]["value"].tolist() == pytest.approx([best])
    # Its tables hold the runs at the chosen values only: per block, seed 0's search run and seed 1.
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 2 * 3 and sorted(table["seed"]) == [0, 0, 0, 1, 1, 1]
    assert "### Tuning on validation" in (sweep / "results.md").read_text()


def test_a_search_job_reads_its_own_results_and_not_another_jobs(tmp_path: Path) -> None:
    from consparse.report.results import write_results
    from hydra_plugins.consparse_sweeper.blocks_sweeper import _record

    plan = tuned(params={"seed": "0"})
    mine, other = plan.search_jobs()[:2]
    result = JobReturn(overrides=mine.overrides, cfg=OmegaConf.create({"setting": {"name": None, "model": None}}),
                       hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}}),
                       status=JobStatus.COMPLETED)  # fmt: skip
    written = {"method": "dense", "model": "mlp", "dataset": "digits", "seed": 0, "status": "failed", "error": "x",
               "setting": {"name": None, "model": None}, "variant": "dense"}  # fmt: skip
    write_results(tmp_path, {**written, "tuning": mine.tuning})
    assert _record(mine, result)["status"] == "failed" and _record(mine, result)["error"] == "x"
    write_results(tmp_path, {**written, "tuning": other.tuning})  # a file left by another job
    assert _record(mine, result)["status"] == "missing"
