"""Lagrange multipliers: projected dual ascent, dual restarts, the Lagrangian term, checkpointing."""

from __future__ import annotations

import pytest
import torch

from consparse.errors import ParameterError
from consparse.optim.lagrangian import LagrangeMultipliers


def test_dual_step_ascends_along_the_defects_and_projects_onto_nonnegatives() -> None:
    multipliers = LagrangeMultipliers(3, dual_lr=0.5, restarts=False)
    multipliers.values.copy_(torch.tensor([1.0, 0.2, 0.0]))
    multipliers.update(torch.tensor([0.4, -1.0, -0.3]))
    # 1 + 0.5*0.4, max(0, 0.2 - 0.5), max(0, 0 - 0.15)
    torch.testing.assert_close(multipliers.values, torch.tensor([1.2, 0.0, 0.0]))


def test_without_restarts_a_satisfied_constraint_decays_gradually() -> None:
    multipliers = LagrangeMultipliers(1, dual_lr=0.1, restarts=False)
    multipliers.values.fill_(1.0)
    multipliers.update(torch.tensor([-0.5]))
    assert float(multipliers.values) == pytest.approx(0.95)


def test_restart_zeroes_multipliers_of_strictly_satisfied_constraints_only() -> None:
    multipliers = LagrangeMultipliers(3, dual_lr=0.1, restarts=True)
    multipliers.values.copy_(torch.tensor([2.0, 2.0, 2.0]))
    multipliers.update(torch.tensor([0.5, -1e-4, 0.0]))
    # violated: ascends; strictly feasible: restarted to 0; active (g = 0): unchanged
    torch.testing.assert_close(multipliers.values, torch.tensor([2.05, 0.0, 2.0]))


def test_multipliers_grow_while_a_constraint_stays_violated() -> None:
    multipliers = LagrangeMultipliers(1, dual_lr=0.01)
    for _ in range(100):
        multipliers.update(torch.tensor([0.2]))
    assert float(multipliers.values) == pytest.approx(0.2, rel=1e-5)


def test_lagrangian_term_holds_the_multipliers_fixed() -> None:
    multipliers = LagrangeMultipliers(2, dual_lr=0.1)
    multipliers.values.copy_(torch.tensor([0.5, 2.0]))
    theta = torch.tensor([1.0, 3.0], requires_grad=True)
    defects = theta**2 - 1.0
    term = multipliers.lagrangian_term(defects)
    assert float(term) == pytest.approx(0.5 * 0.0 + 2.0 * 8.0)
    term.backward()
    torch.testing.assert_close(theta.grad, torch.tensor([0.5 * 2.0, 2.0 * 6.0]))
    assert multipliers.values.grad is None


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected \\(2,\\) defects"):
        LagrangeMultipliers(2, dual_lr=0.1).update(torch.zeros(3))


def test_multipliers_are_in_the_state_dict() -> None:
    multipliers = LagrangeMultipliers(2, dual_lr=0.1)
    multipliers.update(torch.tensor([1.0, 2.0]))
    restored = LagrangeMultipliers(2, dual_lr=0.1)
    restored.load_state_dict(multipliers.state_dict())
    torch.testing.assert_close(restored.values, torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize(("kwargs", "field"), [({"num_constraints": 0, "dual_lr": 0.1}, "num_constraints"),
                                               ({"num_constraints": 1, "dual_lr": 0.0}, "dual_lr")])
def test_bad_settings_are_config_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(ParameterError, match=f"^{field}: "):
        LagrangeMultipliers(**kwargs)
