"""The hard-concrete distribution: P(z != 0) against Monte-Carlo, test-gate thresholds, init, clamp."""

from __future__ import annotations

import math

import pytest
import torch

from consparse.gates.hard_concrete import (
    ACTIVE_SHIFT,
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    HardConcreteGate,
    deterministic_gate,
    log_alpha_for_droprate,
    prob_active,
    sample_gate,
)


def test_active_shift_is_the_papers_threshold() -> None:
    assert ACTIVE_SHIFT == pytest.approx(1.5986, abs=1e-4)


def test_prob_active_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    log_alpha = torch.linspace(-4.0, 4.0, 9)
    samples = 200_000
    z = sample_gate(log_alpha.expand(samples, -1))
    empirical = (z > 0).float().mean(dim=0)
    # Binomial standard error is <= 0.0012 at this sample size.
    torch.testing.assert_close(empirical, prob_active(log_alpha), atol=5e-3, rtol=0)


def test_samples_are_in_the_unit_interval_with_mass_at_both_ends() -> None:
    torch.manual_seed(0)
    z = sample_gate(torch.zeros(100_000))
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0
    assert 0.0 < float((z == 0).float().mean()) < 0.5
    assert 0.0 < float((z == 1).float().mean()) < 0.5


def test_samples_are_differentiable_in_log_alpha() -> None:
    log_alpha = torch.zeros(1000, requires_grad=True)
    sample_gate(log_alpha).sum().backward()
    assert float(log_alpha.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("log_alpha", "expected"),
    [(-ACTIVE_SHIFT - 1e-3, 0.0), (-ACTIVE_SHIFT + 1e-3, None), (ACTIVE_SHIFT - 1e-3, None), (ACTIVE_SHIFT + 1e-3, 1.0)],
)
def test_test_gate_saturates_exactly_at_the_thresholds(log_alpha: float, expected: float | None) -> None:
    gate = float(deterministic_gate(torch.tensor(log_alpha)))
    if expected is None:
        assert 0.0 < gate < 1.0
    else:
        assert gate == expected


def test_test_gate_at_zero_is_one_half() -> None:
    assert float(deterministic_gate(torch.tensor(0.0))) == pytest.approx(0.5)


@pytest.mark.parametrize(("droprate", "log_alpha", "active"), [(0.5, 0.0, 0.832), (0.3, 0.847, 0.920), (0.1, 2.197, 0.978)])
def test_initialisation_from_a_drop_rate(droprate: float, log_alpha: float, active: float) -> None:
    torch.manual_seed(0)
    gate = HardConcreteGate(5000, droprate_init=droprate)
    assert log_alpha_for_droprate(droprate) == pytest.approx(log_alpha, abs=1e-3)
    assert float(gate.log_alpha.detach().mean()) == pytest.approx(log_alpha, abs=1e-3)
    assert float(gate.log_alpha.detach().std()) == pytest.approx(0.01, rel=0.1)
    assert float(gate.prob_active().detach().mean()) == pytest.approx(active, abs=1e-3)


def test_clamp_keeps_log_alpha_in_range() -> None:
    gate = HardConcreteGate(3)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-10.0, 0.5, 10.0]))
    gate.clamp_()
    assert gate.log_alpha.tolist() == pytest.approx([math.log(1e-2), 0.5, math.log(1e2)])
    assert LOG_ALPHA_MIN == pytest.approx(-4.605, abs=1e-3) and LOG_ALPHA_MAX == pytest.approx(4.605, abs=1e-3)


def test_gate_samples_in_training_and_is_deterministic_in_eval() -> None:
    torch.manual_seed(0)
    gate = HardConcreteGate(50)
    first, second = gate(), gate()
    assert not torch.equal(first, second)
    assert gate.current is second
    gate.eval()
    torch.testing.assert_close(gate(), deterministic_gate(gate.log_alpha))
    assert torch.equal(gate(), gate())


def test_bad_droprate_is_rejected() -> None:
    with pytest.raises(ValueError, match="droprate"):
        HardConcreteGate(3, droprate_init=1.0)
