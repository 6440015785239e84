"""The block sweeper's plan (consparse.sweeper): a union of per-block products, launched seed-major,
narrowed by the command line, each job tagged with its block."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException

from consparse.sweeper import (
    DESELECTED,
    PLANNED,
    SKIPPED,
    BlockSweepError,
    SweepPlan,
    plan_sweep,
    skip_unavailable,
)

BLOCKS = {
    "dense": {"method": "dense"},
    "l0": {"method": "l0", "method.target_density": "0.5,0.1"},
    "pen": {"method": "l0_penalty", "method.penalty": [0.01, 0.1]},  # a YAML list: one list value
    "fw": {"method": "implicit_fw", "model": "implicit", "method.target_density": "0.5,0.1"},
}


def values(plan: SweepPlan, block: str, key: str) -> list[str]:
    (found,) = [b for b in plan.blocks if b.name == block]
    return [v.split("=", 1)[1] for v in found.params[key]]


def test_blocks_are_a_union_of_products_launched_seed_major() -> None:
    plan = plan_sweep({"seed": "0,1"}, BLOCKS, ["experiment=x"])
    jobs = plan.jobs()
    assert len(jobs) == 2 * (1 + 2 + 1 + 2)
    assert jobs[0] == ["method=dense", "seed=0", "experiment=x", "variant=dense"]
    assert jobs[3] == ["method=l0_penalty", "method.penalty=[0.01,0.1]", "seed=0", "experiment=x", "variant=pen"]
    assert jobs[4] == [
        "method=implicit_fw",
        "model=implicit",
        "method.target_density=0.5",
        "seed=0",
        "experiment=x",
        "variant=fw",  # every job says which block it is, into its results.json
    ]
    assert [job[-3] for job in jobs] == ["seed=0"] * 6 + ["seed=1"] * 6  # every block for seed 0 first
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
        ({}, {"a": {"method": "dense"}}, ["variant=x"], "the command line: sets variant, which a block sweep sets"),
        ({}, {"a": {"method": "dense", "variant": "b"}}, [], "hydra.sweeper.blocks.a: sets variant"),
    ],
)
def test_misconfigured_sweeps_fail_clearly(params: dict, blocks: dict, args: list[str], match: str) -> None:
    with pytest.raises(BlockSweepError, match=match):
        plan_sweep(params, blocks, args)


def test_optional_names_must_be_blocks() -> None:
    with pytest.raises(BlockSweepError, match=r"hydra.sweeper.optional: \['fx'\] are not blocks"):
        plan_sweep(None, BLOCKS, [], optional=["fx"])


def test_a_null_block_is_left_out_as_if_not_listed() -> None:
    """A preset that includes the shared block list drops the blocks its setting does not compare."""
    dropped = plan_sweep({"seed": "0"}, {**BLOCKS, "pen": None, "fw": None}, [], optional=["fw"])
    listed = plan_sweep({"seed": "0"}, {"dense": BLOCKS["dense"], "l0": BLOCKS["l0"]}, [])
    assert [b.name for b in dropped.blocks] == ["dense", "l0"]
    assert dropped.jobs() == listed.jobs()
    with pytest.raises(BlockSweepError, match="no blocks"):
        plan_sweep(None, {"dense": None}, [])


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


def test_the_sweeper_logs_the_blocks_launched_and_not_run() -> None:
    from hydra_plugins.consparse_sweeper.blocks_sweeper import _describe

    plan = plan_sweep({"seed": "0"}, BLOCKS, ["method=dense,l0"])
    plan.jobs()
    assert _describe(plan) == (
        "dense (1 jobs), l0 (2 jobs); not run: pen (deselected: method=dense,l0 on the command line), "
        "fw (deselected: method=dense,l0 on the command line)"
    )
