"""The N:M sparse polytope: LMO against a brute-force minimum, norm, diameter, sizing and config checks."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from consparse.errors import ParameterError
from consparse.models.lenet import LeNet5
from consparse.optim.constraints import ConstraintSpec, NMSparsePolytope, build_model_constraints
from consparse.optim.constraints.init_norm import expected_init_norms

# (shape, pattern): a Linear weight, a row with a short last group, a conv weight (groups along its
# 3 input channels at every output channel and kernel position), 1:4.
SHAPES = [((2, 6), "2:4"), ((3, 4), "1:4"), ((1, 3, 2, 2), "2:4"), ((2, 2, 3), "1:3")]


@functools.cache
def candidates_under_pattern(shape: tuple[int, ...], pattern: str) -> torch.Tensor:
    """Every tensor of ``shape`` with entries in {-1, 0, 1} and at most N non-zeros per group, written
    out group by group from the definition (input dimension = dim 1), without the module's helpers."""
    n, m = (int(part) for part in pattern.split(":"))
    size = math.prod(shape)
    codes = torch.arange(3**size)
    digits = torch.stack([(codes // 3**i) % 3 for i in range(size)], dim=1) - 1
    points = digits.reshape(-1, *shape).to(torch.float64)
    rows = points.movedim(2, -1).reshape(points.shape[0], -1, shape[1])
    keep = torch.ones(points.shape[0], dtype=torch.bool)
    for start in range(0, shape[1], m):
        keep &= (rows[..., start:start + m] != 0).sum(dim=-1).le(n).all(dim=1)
    return points[keep]


@pytest.mark.parametrize(("shape", "pattern"), SHAPES)
def test_lmo_attains_the_brute_force_minimum(shape, pattern) -> None:
    radius = 0.7
    points = radius * candidates_under_pattern(shape, pattern)
    constraint = NMSparsePolytope(shape, radius, pattern)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        grad = torch.randn(shape, generator=generator, dtype=torch.float64)
        vertex = constraint.lmo(grad)
        best = (points.reshape(points.shape[0], -1) @ grad.reshape(-1)).min()
        assert torch.dot(vertex.reshape(-1), grad.reshape(-1)) == pytest.approx(float(best), rel=1e-12)
        assert (vertex.reshape(1, -1) == points.reshape(points.shape[0], -1)).all(dim=1).any(), "a listed point"
        assert float(constraint.norm(vertex)) == pytest.approx(radius)


@pytest.mark.parametrize(("shape", "pattern"), SHAPES)
def test_diameter_is_the_brute_force_one(shape, pattern) -> None:
    points = candidates_under_pattern(shape, pattern).reshape(-1, math.prod(shape))
    constraint = NMSparsePolytope(shape, 1.0, pattern)
    # The set is symmetric, so its diameter is twice its largest norm.
    assert constraint.diameter == pytest.approx(2 * float(points.norm(dim=1).max()))
    assert NMSparsePolytope.radius_for_diameter(constraint.diameter, shape, pattern) == pytest.approx(1.0)


def test_norm_is_the_largest_group_gauge_and_boundary_points_pass_every_lmo_inequality() -> None:
    constraint = NMSparsePolytope((3, 8), 1.0, "2:4")
    x = torch.zeros(3, 8)
    x[0, :4] = torch.tensor([0.9, 0.9, 0.9, 0.0])  # L1 2.7 over N = 2: gauge 1.35
    x[2, 4] = 1.2  # an entry above the radius: gauge 1.2
    assert float(constraint.norm(x)) == pytest.approx(1.35)
    assert float(constraint.norm(-2 * x)) == pytest.approx(2.7)
    generator = torch.Generator().manual_seed(1)
    inside = constraint.make_feasible(torch.randn(3, 8, generator=generator))
    assert float(constraint.norm(inside)) == pytest.approx(1.0)
    for _ in range(200):
        grad = torch.randn(3, 8, generator=generator)
        assert float((grad * inside).sum()) >= float((grad * constraint.lmo(grad)).sum()) - 1e-5


def test_zero_gradient_gives_zero_and_conv_groups_run_along_input_channels() -> None:
    constraint = NMSparsePolytope((2, 8, 3, 3), 1.0, "2:4")
    assert torch.equal(constraint.lmo(torch.zeros(2, 8, 3, 3)), torch.zeros(2, 8, 3, 3))
    vertex = constraint.lmo(torch.randn(2, 8, 3, 3))
    per_group = (vertex != 0).reshape(2, 2, 4, 3, 3).sum(dim=2)
    assert (per_group == 2).all()


def test_model_constraints_give_every_weight_an_nm_set_sized_from_initialisation() -> None:
    model = LeNet5((1, 28, 28), 10)
    spec = ConstraintSpec(kind="nm", nm="2:4", value=10.0)
    groups = build_model_constraints(model, spec)
    norms = expected_init_norms(model, spec.init_norm_samples, spec.init_norm_seed)
    weights = {name for name, p in model.named_parameters() if name.endswith("weight")}
    sets = {group.name: group.constraint for group in groups if group.constraint is not None}
    for name in weights:
        constraint = sets[name]
        assert isinstance(constraint, NMSparsePolytope)
        assert constraint.diameter == pytest.approx(2 * 10.0 * norms[name], rel=1e-6)
        assert constraint.vertex_nonzeros == constraint.pattern.max_nonzeros(constraint.shape)
    assert all(sets[name].kind == "l2" for name in sets if name.endswith("bias"))


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"kind": "nm", "scope": "global"}, "scope", "scope=layer"),
        ({"kind": "nm", "nm": 124}, "nm", "quote"),
        ({"kind": "nm", "nm": "4:4"}, "nm", "N < M"),
        ({"kind": "nm", "nm": "two:four"}, "nm", "N:M"),
    ],
)
def test_bad_nm_specs_name_their_key(values, field, words) -> None:
    with pytest.raises(ParameterError, match=f"^{field}: ") as error:
        ConstraintSpec.from_config(values)
    assert words in str(error.value)


def test_an_unquoted_yaml_pattern_is_caught_with_the_fix() -> None:
    node = OmegaConf.to_container(OmegaConf.create("kind: nm\nnm: 2:4\n"))
    assert node["nm"] == 124  # YAML 1.1's base-60 integer
    with pytest.raises(ParameterError, match=r'"2:4"'):
        ConstraintSpec.from_config(node)


def test_a_bias_cannot_take_the_nm_set() -> None:
    spec = ConstraintSpec(kind="nm", table={"bias": "nm"})
    with pytest.raises(ParameterError, match="table"):
        build_model_constraints(nn.Sequential(nn.Linear(8, 4)), spec)
