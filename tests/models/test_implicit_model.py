"""The implicit model: exact conversion, well-posedness, projection, fixed-point solvers, implicit backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from consparse.errors import ConfigError
from consparse.implicit.convert import sequential_to_matrices
from consparse.implicit.function import solve_equilibrium
from consparse.implicit.projection import project_rows_l1, row_l1_norms
from consparse.implicit.solvers import FixedPointSettings, solve_fixed_point
from consparse.models.implicit import FixedPointError, ImplicitModel
from consparse.models.mlp import MLP


def _mlp(hidden: tuple[int, ...], seed: int, bias: bool = True) -> MLP:
    torch.manual_seed(seed)
    net = MLP([3, 4], 5, hidden=hidden, bias=bias).double()
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                layer.bias.uniform_(-0.5, 0.5)  # biases large enough to matter
    return net.eval()


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("hidden", [(7,), (9, 6), (8, 7, 5, 4)])
@pytest.mark.parametrize("constrain", ["row", "A"])
def test_conversion_reproduces_random_mlps_exactly(hidden: tuple[int, ...], constrain: str) -> None:
    net = _mlp(hidden, seed=len(hidden))
    x = torch.randn(32, 3, 4, dtype=torch.float64)
    model = ImplicitModel.from_sequential(net, kappa=0.9, constrain=constrain, input_shape=[3, 4])
    torch.testing.assert_close(model(x), net(x), rtol=1e-12, atol=1e-12)
    # A strictly triangular A: the fixed point is reached after one iteration per layer (+1 to see it).
    assert model.fixed_point_summary()["max_iterations"] <= len(hidden) + 1
    float_model = ImplicitModel.from_sequential(net.float(), kappa=0.9, constrain=constrain, input_shape=[3, 4])
    torch.testing.assert_close(float_model(x.float()), net(x.float()), rtol=1e-5, atol=1e-5)


def test_conversion_is_well_posed_after_rescaling() -> None:
    net = _mlp((9, 6, 5), seed=1)
    whole = sequential_to_matrices(net, 0.8, "row", [3, 4])
    rows = row_l1_norms(torch.cat([whole.A, whole.B], dim=1))
    assert float(rows.max()) <= 0.8 + 1e-12
    for layer in whole.layer_slices:
        assert float(rows[layer].max()) == pytest.approx(0.8)  # every layer's largest row is on the sphere
    states_only = sequential_to_matrices(net, 0.8, "A", [3, 4])
    assert float(row_l1_norms(states_only.A).max()) == pytest.approx(0.8)
    assert whole.hidden_parameters == 12 * 9 + 9 + 9 * 6 + 6 + 6 * 5 + 5


def test_bias_free_networks_convert_without_the_constant_input() -> None:
    net = _mlp((6, 4), seed=2, bias=False)
    model = ImplicitModel.from_sequential(net, input_shape=[3, 4])
    assert not model.bias and model.input_width == 12
    x = torch.randn(8, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x), net(x))


def test_networks_that_are_not_linear_relu_chains_are_refused() -> None:
    with pytest.raises(ConfigError, match="Linear/ReLU chain"):
        sequential_to_matrices(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), 0.9)
    with pytest.raises(ConfigError, match="no hidden layer"):
        sequential_to_matrices(nn.Sequential(nn.Linear(4, 2)), 0.9)


# ----------------------------------------------------------------------------- projection
def _brute_force_projection(v: np.ndarray, radius: float) -> np.ndarray:
    """argmin ||w - v||^2 s.t. ||w||_1 <= r, as a QP in w = p - n with p, n >= 0 (SLSQP)."""
    d = v.size
    start = np.concatenate([np.clip(v, 0, None), np.clip(-v, 0, None)]) * min(1.0, radius / max(np.abs(v).sum(), 1e-12))
    result = minimize(
        lambda z: 0.5 * np.sum((z[:d] - z[d:] - v) ** 2),
        start,
        jac=lambda z: np.concatenate([z[:d] - z[d:] - v, -(z[:d] - z[d:] - v)]),
        bounds=[(0, None)] * (2 * d),
        constraints=[{"type": "ineq", "fun": lambda z: radius - z.sum(), "jac": lambda z: -np.ones(2 * d)}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return result.x[:d] - result.x[d:]


def test_row_projection_matches_a_brute_force_qp() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 9, generator=generator, dtype=torch.float64)
    radii = torch.tensor([0.5, 1.0, 2.0, 100.0, 0.05, 3.0], dtype=torch.float64)
    projected = project_rows_l1(rows, radii)
    for row, radius, result in zip(rows, radii, projected):
        expected = _brute_force_projection(row.numpy(), float(radius))
        np.testing.assert_allclose(result.numpy(), expected, atol=1e-6)
    inside = row_l1_norms(rows) <= radii
    assert torch.equal(projected[inside], rows[inside])  # rows inside their ball are untouched
    torch.testing.assert_close(row_l1_norms(projected[~inside]), radii[~inside])
    assert bool((projected[~inside] == 0).any())  # the projection makes exact zeros


def test_project_makes_the_model_well_posed() -> None:
    model = ImplicitModel([6], 3, state_size=10, kappa=0.7)
    with torch.no_grad():
        model.A.mul_(20.0)
    assert model.well_posedness() > 0.7
    assert model.project_().well_posedness() <= 0.7 + 1e-6


# ----------------------------------------------------------------------------- fixed point and backward
def _contraction(n: int = 12, kappa: float = 0.6, seed: int = 0) -> ImplicitModel:
    torch.manual_seed(seed)
    model = ImplicitModel([5], 3, state_size=n, kappa=kappa, rtol=1e-12, atol=1e-14, max_iter=500).double()
    with torch.no_grad():
        model.A.normal_()
        model.project_()
        model.A.mul_(kappa / model.well_posedness())  # rows on the sphere: a slow contraction
    return model


def test_implicit_backward_matches_autograd_through_an_unrolled_solve() -> None:
    model = _contraction()
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    loss = (model(x) ** 2).sum()
    grads = torch.autograd.grad(loss, [model.A, model.B, model.C, model.D, x])
    assert model.last_solve.backward is not None and model.last_solve.backward.converged

    u = model.augment(x)
    states = torch.zeros(7, model.state_size, dtype=torch.float64)
    for _ in range(200):
        states = torch.relu(states @ model.A.T + u @ model.B.T)
    unrolled_loss = ((states @ model.C.T + u @ model.D.T) ** 2).sum()
    unrolled = torch.autograd.grad(unrolled_loss, [model.A, model.B, model.C, model.D, x])
    for ours, reference in zip(grads, unrolled):
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-9)


def test_anderson_acceleration_finds_the_same_fixed_point_faster() -> None:
    model = _contraction(n=30, kappa=0.95, seed=1)
    u = model.augment(torch.randn(16, 5, dtype=torch.float64))
    picard, picard_stats = solve_equilibrium(model.A, model.B, u, FixedPointSettings(max_iter=2000, rtol=1e-10, atol=1e-12))
    anderson, anderson_stats = solve_equilibrium(
        model.A, model.B, u, FixedPointSettings(max_iter=2000, rtol=1e-10, atol=1e-12, anderson_memory=5)
    )
    assert picard_stats.converged and anderson_stats.converged
    torch.testing.assert_close(anderson, picard, rtol=1e-7, atol=1e-9)
    assert anderson_stats.iterations < picard_stats.iterations


def test_the_stopping_rule_is_per_sample_and_scale_aware() -> None:
    model = _contraction(n=10, kappa=0.9, seed=2)
    u = model.augment(torch.randn(4, 5, dtype=torch.float64))
    settings = FixedPointSettings(max_iter=500, rtol=1e-6, atol=0.0)
    alone, alone_stats = solve_equilibrium(model.A, model.B, u[:1] * 1e-4, settings)
    mixed, mixed_stats = solve_equilibrium(model.A, model.B, torch.cat([u[:1] * 1e-4, u[1:] * 1e4]), settings)
    # The tiny sample converges to the same relative accuracy whatever the others' scale.
    torch.testing.assert_close(mixed[:1], alone, rtol=1e-5, atol=0)
    assert alone_stats.converged and mixed_stats.converged and mixed_stats.samples == 4


def test_non_convergence_is_reported_warned_or_raised() -> None:
    model = _contraction(n=20, kappa=0.98, seed=3)
    x = torch.randn(5, 5, dtype=torch.float64)
    step = lambda states: torch.relu(states @ model.A.T + model.augment(x) @ model.B.T)
    with torch.no_grad():
        _, stats = solve_fixed_point(step, torch.zeros(5, 20, dtype=torch.float64), FixedPointSettings(max_iter=3))
    assert not stats.converged and stats.iterations == 3 and stats.max_relative_residual > 1
    for policy, expectation in (("warn", pytest.warns(RuntimeWarning, match="did not converge")),
                                ("error", pytest.raises(FixedPointError, match="did not converge"))):
        strict = ImplicitModel([5], 3, state_size=20, kappa=0.98, max_iter=3, on_nonconvergence=policy).double()
        strict.load_state_dict(model.state_dict())
        with expectation:
            strict(x)
    assert not strict.fixed_point_summary()["converged"]


def test_a_diverging_forward_is_an_error() -> None:
    model = ImplicitModel([5], 3, state_size=8, kappa=0.5, max_iter=400).double()
    with torch.no_grad():
        model.A.copy_(torch.eye(8) * 10.0)
    with pytest.raises(FixedPointError, match="non-finite"):
        model(torch.ones(2, 5, dtype=torch.float64) * 1e3)


def test_a_meta_model_gives_shapes_without_values() -> None:
    with torch.device("meta"):
        model = ImplicitModel([1, 28, 28], 10, state_size=30)
        out = model(torch.empty(4, 1, 28, 28))
    assert out.shape == (4, 10) and out.is_meta
