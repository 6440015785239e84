"""Choosing a value on the validation split (consparse.tuning): the rule the sweeper and the report share."""

from __future__ import annotations

import pytest

from consparse.tuning import SEARCH, Candidate, GridPoint, choose, grid, job_tuning, select

FACTORS = (0.3333333, 1.0, 3.0)
POINTS = grid(0.003, FACTORS)
SETTING = {"name": "compare_x", "model": "mlp"}


def run(variant: str, point: GridPoint, val: float | None, test: float = 0.5, status: str = "completed",
        phase: str = SEARCH, points=POINTS) -> dict:  # fmt: skip
    return {"variant": variant, "method": variant, "setting": SETTING, "status": status, "val_accuracy": val,
            "test_accuracy": test, "tuning": job_tuning("method.optimizer.lr", point, points, phase)}  # fmt: skip


def test_the_grid_is_centred_on_the_default_and_rounded() -> None:
    assert POINTS == [GridPoint(0.001, 0.3333333), GridPoint(0.003, 1.0), GridPoint(0.009, 3.0)]
    assert [p.value for p in grid(1.0, FACTORS)] == [0.333333, 1.0, 3.0]


def test_the_highest_mean_validation_accuracy_wins_whatever_the_test_accuracy() -> None:
    low, mid, high = POINTS
    runs = [
        # low: the best test accuracy at every density, the worst validation accuracy.
        run("sfw", low, 0.80, test=0.99), run("sfw", low, 0.70, test=0.99),
        run("sfw", mid, 0.85, test=0.60), run("sfw", mid, 0.83, test=0.60),
        run("sfw", high, 0.90, test=0.50), run("sfw", high, 0.81, test=0.50),
    ]  # fmt: skip
    (selection,) = select(runs).values()
    assert (selection.setting, selection.variant, selection.key) == ("compare_x", "sfw", "method.optimizer.lr")
    assert [c.value for c in selection.candidates] == [0.001, 0.003, 0.009]
    assert [c.mean for c in selection.candidates] == pytest.approx([0.75, 0.84, 0.855])
    assert selection.chosen.value == 0.009
    assert "chosen 0.009 (x3)" in selection.describe() and "0.003 (x1): 0.8400" in selection.describe()


def test_a_value_that_fails_anywhere_loses_to_one_that_fails_nowhere() -> None:
    low, mid, high = POINTS
    runs = [run("l0", low, 0.70), run("l0", low, 0.71), run("l0", mid, 0.80), run("l0", mid, None, status="diverged"),
            run("l0", high, 0.75), run("l0", high, 0.74)]  # fmt: skip
    (selection,) = select(runs).values()
    assert selection.chosen.value == 0.009  # mid's mean over what it measured (0.80) would have won
    assert selection.candidates[1].failures == 1 and selection.candidates[1].rank == (-1, 0.80)
    assert "1 of 2 failed or missed the target" in selection.describe()
    # Among values that all fail, fewer failures rank first, then the mean of what did not fail.
    everywhere = [run("l0", p, None, status="failed") for p in POINTS] + [run("l0", low, 0.9), run("l0", mid, 0.6)]
    (selection,) = select(everywhere).values()
    assert selection.chosen.value == 0.001
    (selection,) = select([run("l0", p, None, status="failed") for p in POINTS]).values()
    assert selection.chosen.factor == 1.0


def test_a_run_that_keeps_more_weights_than_its_target_fails() -> None:
    low, mid, high = POINTS

    def at(point: GridPoint, val: float, density: float) -> dict:
        return {**run("l0", point, val), "target_density": 0.1, "density": density}

    # high keeps 0.106 > 0.1 x 1.05 for its better accuracy; mid lands inside the tolerance (0.104).
    runs = [at(low, 0.80, 0.09), at(mid, 0.85, 0.104), at(high, 0.95, 0.106)]
    (selection,) = select(runs).values()
    assert selection.chosen.value == 0.003 and selection.candidates[2].failures == 1
    # Without a single target (dense, l0_penalty) nothing is missed.
    assert select([{**run("l0", low, 0.8), "target_density": None, "density": 1.0}]).popitem()[1].candidates[0].failures == 0


def test_ties_go_to_the_default_then_to_the_smaller_factor() -> None:
    assert choose([Candidate(0.1, 0.5, (0.8,)), Candidate(0.2, 1.0, (0.8,)), Candidate(0.4, 2.0, (0.8,))]).factor == 1.0
    assert choose([Candidate(0.1, 0.5, (0.8,)), Candidate(0.4, 2.0, (0.8,))]).factor == 0.5
    # Means of the same accuracies in another order differ by rounding only: still a tie.
    a = Candidate(0.1, 1 / 3, (0.1, 0.2, 0.3))
    b = Candidate(0.3, 1.0, (0.3, 0.2, 0.1))
    assert choose([a, b]) is b
    with pytest.raises(ValueError):
        choose([])


def test_selection_is_per_setting_and_variant_and_ignores_other_runs() -> None:
    low, mid, high = POINTS
    runs = [run("a", low, 0.9), run("a", mid, 0.8), run("a", high, 0.7),
            run("b", low, 0.1), run("b", mid, 0.2), run("b", high, 0.3),
            run("a", high, 0.99, phase="final"), {"variant": "dense", "status": "completed", "val_accuracy": 1.0}]  # fmt: skip
    other = {**run("a", high, 0.95), "setting": {"name": "compare_y", "model": "mlp"}}
    selections = select([*runs, other])
    assert {key: s.chosen.value for key, s in selections.items()} == {
        ("compare_x", "a", "method.optimizer.lr"): 0.001,
        ("compare_x", "b", "method.optimizer.lr"): 0.009,
        ("compare_y", "a", "method.optimizer.lr"): 0.009,
    }
    # A value whose search jobs are all gone is still a candidate, without accuracy.
    (selection,) = select([run("a", low, 0.9)]).values()
    assert [len(c.accuracies) for c in selection.candidates] == [1, 0, 0] and selection.chosen.value == 0.001
