"""The Frank-Wolfe optimiser: the update rule, momentum forms, step-size rules, feasibility, the FW gap,
AMP unscaling, checkpoints and validation."""

from __future__ import annotations

import io
import math

import pytest
import torch

from consparse.errors import ConfigError, ParameterError
from consparse.optim import FrankWolfe
from consparse.optim.constraints import (
    GroupKSupportNormBall,
    KSparsePolytope,
    KSupportNormBall,
    LpBall,
    NuclearNormBall,
    RowwiseL1Ball,
    SpectralKSupportNormBall,
)


def parameter(*shape: int, seed: int = 0, scale: float = 0.1) -> torch.nn.Parameter:
    return torch.nn.Parameter(scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


def set_grad(p: torch.Tensor, seed: int) -> torch.Tensor:
    p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
    return p.grad.clone()


# ---------------------------------------------------------------------------------------- the update
def test_a_step_with_eta_one_lands_on_the_vertex() -> None:
    p = parameter(5, 4)
    ball = KSupportNormBall(p.shape, 3.0, k=4)
    optimizer = FrankWolfe([{"params": [p], "constraint": ball}], lr=1.0, momentum=0.0, rescale="none")
    grad = set_grad(p, 1)
    optimizer.step()
    assert torch.equal(p.detach(), ball.lmo(grad))


def test_the_first_sublinear_step_lands_on_the_vertex_then_eta_is_two_over_t_plus_two() -> None:
    p = parameter(6)
    ball = LpBall(p.shape, 1.0, p=1)
    optimizer = FrankWolfe([{"params": [p], "constraint": ball}], lr=0.5, momentum=0.0, step_rule="sublinear")
    grad = set_grad(p, 2)
    optimizer.step()
    assert torch.equal(p.detach(), ball.lmo(grad))
    before = p.detach().clone()
    grad = set_grad(p, 3)
    optimizer.step()
    torch.testing.assert_close(p.detach(), before + (2 / 3) * (ball.lmo(grad) - before))


@pytest.mark.parametrize("form", ["ema", "sum"])
def test_momentum_forms(form: str) -> None:
    p = parameter(8)
    ball = LpBall(p.shape, 1.0, p=2)
    optimizer = FrankWolfe(
        [{"params": [p], "constraint": ball}], lr=0.3, momentum=0.9, momentum_form=form, rescale="none"
    )
    g1 = set_grad(p, 4)
    optimizer.step()
    g2 = set_grad(p, 5)
    before = p.detach().clone()
    optimizer.step()
    expected_m = 0.9 * g1 + (0.1 if form == "ema" else 1.0) * g2
    torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], expected_m)
    torch.testing.assert_close(p.detach(), 0.7 * before + 0.3 * ball.lmo(expected_m))


@pytest.mark.parametrize("rescale", ["diameter", "gradient", "fast_gradient"])
def test_rescaled_step_sizes(rescale: str) -> None:
    p = parameter(10, seed=6)
    ball = KSupportNormBall(p.shape, 2.0, k=3)
    optimizer = FrankWolfe([{"params": [p], "constraint": ball}], lr=0.05, momentum=0.0, rescale=rescale)
    grad = set_grad(p, 7)
    before = p.detach().clone()
    vertex = ball.lmo(grad)
    optimizer.step()
    factor = {
        "diameter": 1 / ball.diameter,
        "gradient": float(grad.norm() / (before - vertex).norm()),
        "fast_gradient": float(grad.norm() / (ball.diameter / 2)),
    }[rescale]
    eta = min(0.05 * factor, 1.0)
    torch.testing.assert_close(p.detach(), before + eta * (vertex - before))
    if rescale == "gradient":
        # The step is as long as an SGD step with the same learning rate.
        assert float((p.detach() - before).norm()) == pytest.approx(0.05 * float(grad.norm()), rel=1e-5)


def test_adaptive_eta_is_lr_times_the_rms_of_the_momentum_over_the_root_second_moment() -> None:
    p = parameter(12, seed=9)
    ball = KSupportNormBall(p.shape, 2.0, k=3)
    optimizer = FrankWolfe(
        [{"params": [p], "constraint": ball}], lr=0.01, momentum=0.9, rescale="adaptive", second_moment=0.99
    )
    g1 = set_grad(p, 10)
    optimizer.step()
    g2 = set_grad(p, 11)
    before = p.detach().clone()
    optimizer.step()
    m = 0.9 * g1 + 0.1 * g2
    v = 0.99 * g1.square() + 0.01 * g2.square()
    torch.testing.assert_close(optimizer.state[p]["second_moment"], v)
    vertex = ball.lmo(m)
    eta = 0.01 * float((m / v.sqrt()).square().mean().sqrt())
    assert 0 < eta < 0.01
    torch.testing.assert_close(p.detach(), before + eta * (vertex - before))


def test_adaptive_steps_do_not_depend_on_the_gradients_scale() -> None:
    steps = []
    for scale in (1.0, 1e-3):
        p = parameter(4, 5, seed=12)
        ball = KSupportNormBall(p.shape, 3.0, k=4)
        optimizer = FrankWolfe(
            [{"params": [p], "constraint": ball}], lr=0.02, momentum=0.9, rescale="adaptive"
        )
        for seed in range(5):
            p.grad = scale * set_grad(p, 20 + seed)
            optimizer.step()
        steps.append(p.detach().clone())
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-3, atol=1e-5)


def test_adaptive_rescale_of_a_group_of_tensors_averages_over_all_their_entries() -> None:
    weight, bias = parameter(3, 4, seed=13), parameter(3, seed=14)
    ball = LpBall((15,), 5.0, p=2)
    optimizer = FrankWolfe(
        [{"params": [weight, bias], "constraint": ball}], lr=0.05, momentum=0.0, rescale="adaptive"
    )
    set_grad(weight, 15)
    bias.grad = torch.zeros(3)  # an entry never seen contributes nothing (no division by zero)
    theta = torch.cat([weight.detach().reshape(-1), bias.detach()])
    grad = torch.cat([weight.grad.reshape(-1), bias.grad])
    optimizer.step()
    vertex = ball.lmo(grad)
    eta = 0.05 * math.sqrt(12 / 15)
    after = torch.cat([weight.detach().reshape(-1), bias.detach()])
    torch.testing.assert_close(after, theta + eta * (vertex - theta), rtol=1e-5, atol=1e-6)


def test_eta_is_clipped_to_one() -> None:
    p = parameter(6)
    ball = LpBall(p.shape, 1.0, p=2)
    optimizer = FrankWolfe([{"params": [p], "constraint": ball}], lr=1e6, momentum=0.0, rescale="gradient")
    grad = set_grad(p, 8)
    optimizer.step()
    torch.testing.assert_close(p.detach(), ball.lmo(grad))


def test_unconstrained_group_takes_a_momentum_sgd_step() -> None:
    p = parameter(4)
    optimizer = FrankWolfe([{"params": [p], "constraint": None}], lr=0.1, momentum=0.5, momentum_form="sum")
    before = p.detach().clone()
    g1 = set_grad(p, 9)
    optimizer.step()
    g2 = set_grad(p, 10)
    optimizer.step()
    torch.testing.assert_close(p.detach(), before - 0.1 * g1 - 0.1 * (0.5 * g1 + g2))
    assert optimizer.frank_wolfe_gaps() == {}


def test_a_global_group_is_one_set_over_the_concatenation() -> None:
    first, second = parameter(3, 4, seed=1), parameter(5, seed=2)
    joined = torch.nn.Parameter(torch.cat([first.detach().reshape(-1), second.detach()]))
    pooled = FrankWolfe(
        [{"params": [first, second], "constraint": KSupportNormBall((17,), 2.0, k=4)}], lr=0.2
    )
    single = FrankWolfe([{"params": [joined], "constraint": KSupportNormBall((17,), 2.0, k=4)}], lr=0.2)
    for seed in range(3):
        g1, g2 = set_grad(first, seed), set_grad(second, seed + 10)
        joined.grad = torch.cat([g1.reshape(-1), g2])
        pooled.step()
        single.step()
    torch.testing.assert_close(torch.cat([first.detach().reshape(-1), second.detach()]), joined.detach())


def test_parameters_without_gradients_are_left_alone() -> None:
    used, unused = parameter(4, seed=1), parameter(4, seed=2)
    optimizer = FrankWolfe(
        [
            {"params": [used], "constraint": LpBall((4,), 1.0)},
            {"params": [unused], "constraint": LpBall((4,), 1.0)},
        ]
    )
    before = unused.detach().clone()
    set_grad(used, 3)
    optimizer.step()
    assert torch.equal(unused.detach(), before)
    assert list(optimizer.frank_wolfe_gaps()) == ["0"]


# ---------------------------------------------------------------------------------------- feasibility and the gap
FEASIBILITY_SETS = [
    lambda shape: LpBall(shape, 0.5, p=1),
    lambda shape: LpBall(shape, 0.05, p=math.inf),
    lambda shape: KSparsePolytope(shape, 0.05, k=0.1),
    lambda shape: KSupportNormBall(shape, 0.5, k=0.1),
    lambda shape: GroupKSupportNormBall(shape, 0.5, k=2),
    lambda shape: NuclearNormBall(shape, 0.5),
    lambda shape: SpectralKSupportNormBall(shape, 0.5, k=2),
    lambda shape: RowwiseL1Ball(shape, torch.linspace(0.1, 0.5, shape[0])),
]


@pytest.mark.parametrize(
    "make_set",
    FEASIBILITY_SETS,
    ids=["l1", "linf", "ksparse", "ksupport", "group", "nuclear", "spectral", "rowwise_l1"],
)
@pytest.mark.parametrize("rescale", ["gradient", "diameter"])
def test_iterates_stay_feasible_over_many_steps(make_set, rescale: str) -> None:
    p = parameter(8, 6, scale=1.0)
    constraint = make_set(p.shape)
    optimizer = FrankWolfe([{"params": [p], "constraint": constraint}], lr=0.5, momentum=0.9, rescale=rescale)
    assert optimizer.make_feasible_() == 1
    assert constraint.is_feasible(p.detach())
    for seed in range(60):
        set_grad(p, seed)
        optimizer.step()
        assert constraint.is_feasible(p.detach()), f"infeasible after step {seed}"
    assert optimizer.make_feasible_() == 0


@pytest.mark.parametrize(
    "make_set",
    [lambda: LpBall((20,), 1.0, p=1), lambda: KSupportNormBall((20,), 1.0, k=4)],
    ids=["l1", "ksupport"],
)
def test_the_frank_wolfe_gap_goes_to_zero_on_a_convex_problem(make_set) -> None:
    # min 0.5 ||x - b||^2 over the set, b outside it: deterministic gradients, the classic 2/(t+2) rule.
    b = torch.randn(20, generator=torch.Generator().manual_seed(0))
    x = torch.nn.Parameter(torch.zeros(20))
    constraint = make_set()
    optimizer = FrankWolfe(
        [{"params": [x], "constraint": constraint, "name": "x"}], momentum=0.0, step_rule="sublinear"
    )
    gaps = []
    for _ in range(2000):
        x.grad = (x.detach() - b).clone()
        optimizer.step()
        gaps.append(float(optimizer.frank_wolfe_gaps()["x"]))
        # The gap is <grad, x - V> at the iterate before the step; it certifies f(x) - f* <= gap.
        assert gaps[-1] >= -1e-6
    assert min(gaps[-100:]) < 1e-3 * gaps[0]
    assert constraint.is_feasible(x.detach())


def test_reported_gap_is_the_inner_product_with_theta_minus_v() -> None:
    p = parameter(6, seed=3)
    ball = KSupportNormBall(p.shape, 1.0, k=2)
    optimizer = FrankWolfe([{"params": [p], "constraint": ball, "name": "w"}], lr=0.1, momentum=0.0)
    before = p.detach().clone()
    grad = set_grad(p, 4)
    optimizer.step()
    expected = float((grad * (before - ball.lmo(grad))).sum())
    assert float(optimizer.frank_wolfe_gaps()["w"]) == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------- AMP and checkpoints
def test_amp_grad_scaler_unscales_before_the_lmo() -> None:
    # With a GradScaler the optimiser sees unscaled gradients (scaler.step unscales first), so the
    # step equals the unscaled one; Lightning's precision plugin does the same for 16-mixed.
    def run(scale: bool) -> torch.Tensor:
        p = parameter(5, 3, seed=1)
        optimizer = FrankWolfe([{"params": [p], "constraint": KSupportNormBall(p.shape, 1.0, k=3)}], lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=scale)
        target = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
        for _ in range(3):
            optimizer.zero_grad()
            scaler.scale(((p - target) ** 2).sum()).backward()
            scaler.step(optimizer)
            scaler.update()
        return p.detach()

    torch.testing.assert_close(run(scale=True), run(scale=False))


def test_grad_scaler_skips_the_step_on_inf_gradients() -> None:
    p = parameter(4)
    optimizer = FrankWolfe([{"params": [p], "constraint": LpBall((4,), 1.0)}], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    before = p.detach().clone()
    scaler.scale(p.sum() * float("inf")).backward()
    scaler.step(optimizer)
    assert torch.equal(p.detach(), before)


def test_state_dict_round_trip_keeps_constraints_and_loads_weights_only() -> None:
    p = parameter(4, 3)
    ball = KSupportNormBall(p.shape, 1.0, k=3)
    optimizer = FrankWolfe([{"params": [p], "constraint": ball, "name": "w"}], lr=0.1)
    set_grad(p, 1)
    optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["param_groups"][0]["constraint"]["set"] == "ksupport"
    fresh = FrankWolfe(
        [{"params": [p], "constraint": KSupportNormBall(p.shape, 1.0, k=3), "name": "w"}], lr=0.1
    )
    fresh.load_state_dict(saved)
    assert isinstance(fresh.param_groups[0]["constraint"], KSupportNormBall)
    torch.testing.assert_close(fresh.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])
    other = FrankWolfe([{"params": [p], "constraint": LpBall(p.shape, 1.0)}], lr=0.1)
    with pytest.raises(ConfigError, match="method.constraint"):
        other.load_state_dict(saved)


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum_form": "nesterov"}, "momentum_form"),
        ({"rescale": "norm"}, "rescale"),
        ({"step_rule": "armijo"}, "step_rule"),
        ({"lr": 2.0, "rescale": "none"}, "lr"),
        ({"second_moment": 1.0, "rescale": "adaptive"}, "second_moment"),
    ],
)
def test_bad_hyperparameters_raise_config_errors(options: dict, field: str) -> None:
    p = parameter(3)
    with pytest.raises(ParameterError, match=f"^{field}: "):
        FrankWolfe([{"params": [p], "constraint": LpBall((3,), 1.0)}], **options)


def test_a_constraint_of_the_wrong_size_is_rejected() -> None:
    p = parameter(3, 4)
    with pytest.raises(ValueError, match="sized for 10 entries"):
        FrankWolfe([{"params": [p], "constraint": LpBall((10,), 1.0)}])
