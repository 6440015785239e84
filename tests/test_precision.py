"""Full-precision islands: under bf16 autocast (the GPU default, bf16-mixed) every method numeric that
selects, iterates or solves gives float32 results equal to the computation without autocast.

Run on the CPU's autocast, which casts matrix products to bfloat16 exactly as CUDA's does; the
CUDA versions of the main checks are in tests/test_gpu.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from consparse.gates import expected_l2, expected_layer_densities, expected_model_density, gate_model
from consparse.gates.hard_concrete import deterministic_gate, prob_active, sample_gate
from consparse.implicit.function import SolveRecord, equilibrium
from consparse.implicit.solvers import FixedPointSettings
from consparse.lasso.active_set import ActiveSet
from consparse.lasso.path import solve_lasso
from consparse.lasso.problem import LassoProblem
from consparse.optim import FrankWolfe
from consparse.optim.constraints import (
    GroupKSupportNormBall,
    KSparsePolytope,
    KSupportNormBall,
    LpBall,
    NuclearNormBall,
    RowwiseKSparsePolytope,
    RowwiseKSupportNormBall,
    RowwiseL1Ball,
    SpectralKSupportNormBall,
)
from consparse.optim.lagrangian import LagrangeMultipliers
from consparse.precision import autocast_disabled, full_precision


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_autocast_really_lowers_matrix_products_here() -> None:
    """The premise of every test below: without an island, a product under autocast is bfloat16."""
    a = torch.randn(8, 8)
    with bf16_autocast():
        assert (a @ a).dtype == torch.bfloat16
        with autocast_disabled():
            assert (a @ a).dtype == torch.float32
    assert torch.is_autocast_enabled("cpu") is False


def test_full_precision_promotes_low_precision_arguments_and_keeps_float64() -> None:
    @full_precision
    def product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x @ y

    x = torch.randn(4, 4)
    with bf16_autocast():
        assert product(x.bfloat16(), x).dtype == torch.float32
        assert product(x.double(), x.double()).dtype == torch.float64
        inside = product(x, x)
    assert torch.equal(inside, x @ x)


SETS = {
    "l1": lambda: LpBall((16, 12), 2.0, p=1),
    "l2": lambda: LpBall((16, 12), 2.0, p=2),
    "linf": lambda: LpBall((16, 12), 0.7, p=math.inf),
    "l1.5": lambda: LpBall((16, 12), 1.3, p=1.5),
    "ksparse": lambda: KSparsePolytope((16, 12), 0.5, k=0.1),
    "ksupport": lambda: KSupportNormBall((16, 12), 2.0, k=0.1),
    "group": lambda: GroupKSupportNormBall((16, 3, 2, 2), 2.0, k=0.25),
    "nuclear": lambda: NuclearNormBall((16, 12), 2.0, svd_iterations=3),
    "spectral_ksupport": lambda: SpectralKSupportNormBall((16, 12), 2.0, k=3, svd_iterations=3),
    "rowwise_l1": lambda: RowwiseL1Ball((16, 12), 1.0, support_budget=3),
    "rowwise_ksparse": lambda: RowwiseKSparsePolytope((16, 12), 0.3, k=2),
    "rowwise_ksupport": lambda: RowwiseKSupportNormBall((16, 12), 0.5, k=2),
}


@pytest.mark.parametrize("name", list(SETS))
def test_every_lmo_and_norm_is_float32_and_exact_under_autocast(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(SETS[name]().shape, generator=generator)
    x = SETS[name]().make_feasible(torch.randn(grad.shape, generator=generator))
    plain_set, autocast_set = SETS[name](), SETS[name]()  # separate warm starts (spectral sets keep one)
    expected = (plain_set.lmo_at(grad, x), plain_set.norm(x), plain_set.make_feasible(3 * x))
    with bf16_autocast():
        got = (autocast_set.lmo_at(grad, x), autocast_set.norm(x), autocast_set.make_feasible(3 * x))
    for want, have in zip(expected, got):
        assert have.dtype == torch.float32
        torch.testing.assert_close(have, want, rtol=0, atol=0)


def test_a_frank_wolfe_step_inside_autocast_equals_the_step_outside() -> None:
    """Manual optimisation calls ``step`` inside the autocast region: the step must not notice."""
    torch.manual_seed(0)
    weight = torch.randn(16, 12)
    grads = [torch.randn(16, 12) for _ in range(3)]

    def steps(autocast: bool) -> torch.Tensor:
        p = nn.Parameter(weight.clone())
        optimizer = FrankWolfe([{"params": [p], "constraint": SpectralKSupportNormBall((16, 12), 5.0, k=2)}], lr=0.5)
        for g in grads:
            p.grad = g.clone()
            with bf16_autocast() if autocast else autocast_disabled():
                optimizer.step()
        return p.detach()

    assert steps(True).dtype == torch.float32
    torch.testing.assert_close(steps(True), steps(False), rtol=0, atol=0)


def test_gate_probabilities_and_expected_densities_are_float32_under_autocast() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    gate_model(net, structured=True, droprate_init=0.3)
    log_alpha = torch.randn(50)
    plain = (prob_active(log_alpha), deterministic_gate(log_alpha), expected_layer_densities(net),
             expected_model_density(net), expected_l2(net))
    with bf16_autocast():
        inside = (prob_active(log_alpha.bfloat16()), deterministic_gate(log_alpha), expected_layer_densities(net),
                  expected_model_density(net), expected_l2(net))
        assert sample_gate(log_alpha).dtype == torch.float32
        net(torch.randn(8, 20))
        assert net[0].gate.current.dtype == torch.float32
    for want, have in zip(plain, inside):
        assert have.dtype == torch.float32
        torch.testing.assert_close(have, want, rtol=0, atol=2e-3 if want is plain[0] else 0)


def test_the_lagrangian_and_the_dual_step_are_float32_under_autocast() -> None:
    multipliers = LagrangeMultipliers(3, dual_lr=0.1, restarts=False)
    multipliers.values.copy_(torch.tensor([0.5, 1.0, 2.0]))
    defects = torch.tensor([0.01, -0.002, 0.0003])
    with bf16_autocast():
        term = multipliers.lagrangian_term(defects.bfloat16())
        multipliers.update(defects)
    assert term.dtype == torch.float32 and multipliers.values.dtype == torch.float32
    torch.testing.assert_close(multipliers.values, torch.tensor([0.501, 0.9998, 2.00003]))


def test_the_implicit_fixed_point_and_its_adjoint_are_float32_and_exact_under_autocast() -> None:
    generator = torch.Generator().manual_seed(0)
    n, p, samples = 40, 12, 16
    A = torch.randn(n, n, generator=generator)
    A = 0.9 * A / A.abs().sum(dim=1, keepdim=True)
    B = torch.randn(n, p, generator=generator)
    U = torch.randn(samples, p, generator=generator)
    upstream = torch.randn(samples, n, generator=generator)
    settings = FixedPointSettings(max_iter=500, rtol=1e-6)

    def solve(autocast: bool) -> tuple[torch.Tensor, ...]:
        a, b = A.clone().requires_grad_(), B.clone().requires_grad_()
        record = SolveRecord()
        with bf16_autocast() if autocast else autocast_disabled():
            states = equilibrium(a, b, U, settings, settings, record)
        (states * upstream).sum().backward()
        assert record.forward.converged and record.backward.converged
        return states.detach(), a.grad, b.grad

    for want, have in zip(solve(False), solve(True)):
        assert have.dtype == torch.float32
        torch.testing.assert_close(have, want, rtol=0, atol=0)


def test_lasso_solves_are_exact_under_autocast() -> None:
    generator = torch.Generator().manual_seed(1)
    design = torch.randn(60, 20, generator=generator)
    targets = torch.randn(8, 60, generator=generator)
    problem = LassoProblem(design.T @ design, targets @ design, (targets * targets).sum(dim=1))
    lam = 0.2 * problem.lambda_max()
    plain, _ = solve_lasso(problem, lam)
    radius = torch.full((problem.rows,), 1.0)
    constrained = ActiveSet(problem).solve(radius)
    with bf16_autocast():
        inside, _ = solve_lasso(problem, lam)
        constrained_inside = ActiveSet(problem).solve(radius)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)
    torch.testing.assert_close(constrained_inside.weights, constrained.weights, rtol=0, atol=0)
