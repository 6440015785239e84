"""The outer search for the radius that meets a density target."""

from __future__ import annotations

import pytest

from consparse.methods.implicit_lasso.kappa_search import DensitySearchSettings, search_kappa


@pytest.mark.parametrize("target", [0.3, 0.05, 0.004])
@pytest.mark.parametrize("start", [0.5, 0.01])
def test_a_power_law_density_is_met_within_tolerance(target: float, start: float) -> None:
    calls: list[float] = []

    def evaluate(kappa: float) -> tuple[float, str]:
        calls.append(kappa)
        return min(1.0, 2.0 * kappa**0.8), f"model at {kappa}"

    result = search_kappa(evaluate, target, start, DensitySearchSettings(tolerance=0.02, max_steps=12))
    assert result.met
    assert target * 0.98 <= result.density <= target
    assert result.payload == f"model at {result.kappa}"
    assert len(result.history) == len(calls) <= 12


def test_a_step_density_keeps_the_closest_feasible_candidate() -> None:
    # The density jumps over the target: no kappa meets it, the best feasible one is returned.
    result = search_kappa(lambda kappa: (0.1 if kappa < 0.2 else 0.5, kappa), 0.3, 0.5, DensitySearchSettings(max_steps=8))
    assert not result.met
    assert result.density == 0.1 and result.payload < 0.2
