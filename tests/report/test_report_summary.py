"""Averaging over seeds and judging targets (consparse.report.summary)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from consparse.errors import ConfigError
from consparse.report import collect_results, summarise


def mean_std(a: float, b: float) -> tuple[float, float]:
    """Mean and sample std of two values, by hand."""
    return (a + b) / 2, abs(a - b) / math.sqrt(2)


def test_summary_groups_seeds_and_marks_the_best(sweep: Path) -> None:
    summary = summarise(collect_results(sweep))
    assert len(summary) == 8
    by_key = {(r.method, None if pd.isna(r.target_density) else r.target_density): r for r in summary.itertuples()}
    sfw = by_key[("sfw", 0.1)]
    mean, std = mean_std(0.9750, 0.9730)
    assert sfw.test_accuracy_mean == pytest.approx(mean) and sfw.test_accuracy_std == pytest.approx(std)
    assert sfw.n_seeds == 2 and sfw.seeds == "0, 1"
    l0 = by_key[("l0", 0.1)]
    assert l0.density_mean == pytest.approx(0.118) and l0.density_vs_target == pytest.approx(0.18)
    assert not l0.meets_target and not l0.best  # most accurate at 0.1, but 18 % over the target
    assert by_key[("l0", 0.05)].n_failed == 1
    best = sorted((r.method, r.target_density) for r in summary.itertuples() if r.best)
    assert best == [("l0", 0.05), ("sfw", 0.1)]  # and nobody at 0.02
    penalty = by_key[("l0_penalty", None)]
    assert penalty.variant == "method.penalty=0.01" and pd.isna(penalty.meets_target)
    assert math.isnan(penalty.test_accuracy_std)  # one seed: no std rather than a measured 0
    # trainer.max_epochs=3 is the same in every run, so it does not make a variant.
    assert set(summary["variant"]) == {"", "method.penalty=0.01"}


def test_tolerance_decides_who_meets_a_target(sweep: Path) -> None:
    summary = summarise(collect_results(sweep), tolerance=0.2)
    best = sorted((r.method, r.target_density) for r in summary.itertuples() if r.best)
    assert best == [("l0", 0.05), ("l0", 0.1)]
    with pytest.raises(ConfigError, match="report.tolerance"):
        summarise(collect_results(sweep), tolerance=-0.1)
