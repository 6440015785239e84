"""From a model to SFW param groups: tensor kinds, the table, init-norm radii (per parameter), k, scopes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from consparse.errors import ParameterError
from consparse.optim import FrankWolfe
from consparse.optim.constraints import (
    ConstraintSpec,
    GroupKSupportNormBall,
    KSparsePolytope,
    KSupportNormBall,
    LpBall,
    SpectralKSupportNormBall,
    build_model_constraints,
    classify_parameters,
    expected_init_norms,
)


class SmallConvNet(nn.Module):
    """conv -> BatchNorm -> Linear, with a BN weight, a BN bias and a conv bias all of shape (4,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1)) * self.scale


def by_name(groups) -> dict:
    return {group.name: group for group in groups}


def test_parameters_are_classified_by_tensor_kind() -> None:
    kinds = {name: kind for name, kind, _ in classify_parameters(SmallConvNet())}
    assert kinds == {
        "conv.weight": "conv",
        "conv.bias": "bias",
        "bn.weight": "batchnorm",
        "bn.bias": "batchnorm",
        "fc.weight": "linear",
        "fc.bias": "bias",
        "scale": "other",
    }


def test_init_norms_are_per_parameter_not_per_shape() -> None:
    model = SmallConvNet()
    norms = expected_init_norms(model, samples=20)
    # Three (4,)-shaped tensors, three different expectations (the SFW code would give all three one value).
    assert norms["bn.weight"] == pytest.approx(2.0)  # ones(4)
    assert norms["bn.bias"] == 1.0  # zeros: replaced by 1
    assert norms["conv.bias"] not in (2.0, 1.0)
    # Linear(64 -> 3) weights are U(-b, b) with b = 1/sqrt(64): E||W||^2 = 3 * 64 * b^2 / 3 = 1.
    assert norms["fc.weight"] == pytest.approx(1.0, rel=0.05)
    assert norms["scale"] == pytest.approx(math.sqrt(3))  # no reset_parameters: its current norm


def test_init_norms_leave_the_model_and_the_random_stream_alone() -> None:
    model = SmallConvNet()
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = torch.random.get_rng_state()
    first = expected_init_norms(model, samples=5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p.detach(), weights[name]) for name, p in model.named_parameters())
    assert expected_init_norms(model, samples=5, seed=3) == first


def test_the_table_assigns_sets_and_k_follows_the_target_density() -> None:
    spec = ConstraintSpec(kind="ksupport", value=10.0, table={"batchnorm": "none", "other": "linf"})
    groups = by_name(build_model_constraints(SmallConvNet(), spec, target_density=0.25))
    assert isinstance(groups["conv.weight"].constraint, KSupportNormBall)
    assert groups["conv.weight"].constraint.k == int(0.25 * 72)
    assert groups["fc.weight"].constraint.k == int(0.25 * 192)
    assert isinstance(groups["conv.bias"].constraint, LpBall) and groups["conv.bias"].constraint.p == 2
    assert groups["scale"].constraint.p == math.inf
    assert groups["unconstrained"].constraint is None
    assert groups["unconstrained"].parameter_names == ["bn.weight", "bn.bias"]


def test_initialization_mode_sizes_each_set_from_its_own_expected_norm() -> None:
    model = SmallConvNet()
    norms = expected_init_norms(model, samples=10)
    spec = ConstraintSpec(kind="ksparse", k=0.5, value=3.0, init_norm_samples=10)
    groups = by_name(build_model_constraints(model, spec))
    for name in ("conv.weight", "fc.weight", "conv.bias", "bn.weight", "bn.bias"):
        assert groups[name].constraint.diameter == pytest.approx(2 * 3.0 * norms[name])
    assert isinstance(groups["fc.weight"].constraint, KSparsePolytope)


@pytest.mark.parametrize(("mode", "attribute"), [("radius", "radius"), ("diameter", "diameter")])
def test_radius_and_diameter_modes_take_the_value_directly(mode: str, attribute: str) -> None:
    spec = ConstraintSpec(kind="ksparse", k=0.5, mode=mode, value=4.0)
    for group in build_model_constraints(SmallConvNet(), spec):
        assert getattr(group.constraint, attribute) == pytest.approx(4.0)


def test_global_scope_pools_the_main_kind_into_one_set() -> None:
    model = SmallConvNet()
    norms = expected_init_norms(model, samples=10)
    spec = ConstraintSpec(kind="ksupport", k=0.1, scope="global", value=2.0)
    groups = build_model_constraints(model, spec)
    pooled = groups[0]
    assert pooled.name == "global_ksupport"
    assert pooled.parameter_names == ["conv.weight", "fc.weight"]
    assert pooled.constraint.k == int(0.1 * (72 + 192))
    assert pooled.constraint.diameter == pytest.approx(
        2 * 2.0 * math.hypot(norms["conv.weight"], norms["fc.weight"])
    )
    assert {g.name for g in groups[1:]} == {"conv.bias", "bn.weight", "bn.bias", "fc.bias", "scale"}


def test_global_group_ksupport_counts_filters_and_neurons_across_tensors() -> None:
    spec = ConstraintSpec(kind="group_ksupport", k=3, scope="global")
    pooled = build_model_constraints(SmallConvNet(), spec)[0]
    assert isinstance(pooled.constraint, GroupKSupportNormBall)
    assert pooled.constraint.group_sizes == [18] * 4 + [64] * 3
    assert pooled.constraint.k == 3


def test_spectral_sets_view_conv_weights_as_matrices() -> None:
    spec = ConstraintSpec(kind="spectral_ksupport", k=0.5)
    groups = by_name(build_model_constraints(SmallConvNet(), spec))
    conv = groups["conv.weight"].constraint
    assert isinstance(conv, SpectralKSupportNormBall)
    assert (conv.rows, conv.cols, conv.k) == (4, 18, 2)


def test_the_groups_drive_the_optimiser_and_the_start_is_made_feasible() -> None:
    model = SmallConvNet()
    spec = ConstraintSpec(kind="ksupport", k=0.1, mode="radius", value=0.05)
    groups = build_model_constraints(model, spec)
    optimizer = FrankWolfe([g.as_param_group() for g in groups], lr=0.1)
    assert optimizer.make_feasible_() > 0
    loss = model(torch.randn(2, 2, 6, 6)).square().sum()
    loss.backward()
    optimizer.step()
    for group in groups:
        assert group.constraint.is_feasible(group.parameters[0].detach())


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "l0"}, "kind"),
        ({"scope": "everywhere"}, "scope"),
        ({"mode": "auto"}, "mode"),
        ({"value": 0}, "value"),
        ({"k": 2.5}, "k"),
        ({"k": 0}, "k"),
        ({"table": {"embedding": "l2"}}, "table"),
        ({"table": {"bias": "l0"}}, "table.bias"),
        ({"kind": "nuclear", "scope": "global"}, "scope"),
        ({"init_norm_samples": 0}, "init_norm_samples"),
    ],
)
def test_bad_specs_raise_config_errors(spec: dict, field: str) -> None:
    with pytest.raises(ParameterError, match=f"^{field}: "):
        ConstraintSpec(**spec)


def test_unknown_spec_keys_are_named() -> None:
    with pytest.raises(ParameterError, match="unknown keys \\['radius'\\]"):
        ConstraintSpec.from_config({"kind": "l2", "radius": 3.0})
    assert ConstraintSpec.from_config({"kind": "l2", "value": 3.0}).value == 3.0


def test_k_sets_need_k_or_a_target_density() -> None:
    with pytest.raises(ParameterError, match="^k: "):
        build_model_constraints(SmallConvNet(), ConstraintSpec(kind="ksupport"))
    assert ConstraintSpec(kind="l1").resolved_k(None) is None


def test_group_sets_on_biases_are_rejected() -> None:
    spec = ConstraintSpec(kind="group_ksupport", k=0.5, table={"bias": "same"})
    with pytest.raises(ParameterError, match="group_ksupport"):
        build_model_constraints(SmallConvNet(), spec)
