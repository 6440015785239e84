"""Constraint sets: each LMO is feasible and optimal (brute force / closed form), sparse / low-rank,
maps zero to zero; norms, radius <-> diameter conversions and feasibility rescaling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from consparse.errors import ParameterError
from consparse.optim.constraints import (
    ConstraintSet,
    GroupKSupportNormBall,
    KSparsePolytope,
    KSupportNormBall,
    LpBall,
    NuclearNormBall,
    RowwiseKSparsePolytope,
    RowwiseKSupportNormBall,
    RowwiseL1Ball,
    SpectralKSupportNormBall,
    ksupport_norm_rows,
    resolve_k,
    top_right_singular_basis,
)

# One instance of every set, small enough for brute force; ids name them in the test report.
SETS = {
    "l1": lambda: LpBall((4, 5), 2.0, p=1),
    "l2": lambda: LpBall((4, 5), 2.0, p=2),
    "linf": lambda: LpBall((4, 5), 0.7, p=math.inf),
    "l3": lambda: LpBall((4, 5), 1.3, p=3),
    "l1.5": lambda: LpBall((4, 5), 1.3, p=1.5),
    "ksparse": lambda: KSparsePolytope((4, 5), 0.5, k=0.2),
    "ksupport": lambda: KSupportNormBall((4, 5), 2.0, k=3),
    "group_conv": lambda: GroupKSupportNormBall((6, 3, 2, 2), 2.0, k=2),
    "group_linear": lambda: GroupKSupportNormBall((7, 4), 1.5, k=0.5),
    "group_segments": lambda: GroupKSupportNormBall((20,), 1.0, k=2, group_sizes=[5, 5, 4, 6]),
    # Enough power iterations for the partial SVD to be exact here (its accuracy is tested below).
    "nuclear": lambda: NuclearNormBall((6, 3, 2, 2), 2.0, svd_iterations=60),
    "spectral_ksupport": lambda: SpectralKSupportNormBall((6, 12), 2.0, k=3, svd_iterations=60),
    "rowwise_l1": lambda: RowwiseL1Ball((4, 5), [1.0, 2.0, 3.0, 4.0]),
    "rowwise_ksparse": lambda: RowwiseKSparsePolytope((4, 5), 0.3, k=2),
    "rowwise_ksupport": lambda: RowwiseKSupportNormBall((4, 5), [0.5, 1.0, 1.5, 2.0], k=2),
}


@pytest.fixture(params=list(SETS), ids=list(SETS))
def constraint(request) -> ConstraintSet:
    return SETS[request.param]()


def random_feasible_points(c: ConstraintSet, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Random vertices (LMO of random directions) and random convex combinations of them."""
    vertices = [c.lmo(torch.randn(c.shape, generator=generator, dtype=torch.float64)) for _ in range(count)]
    points = list(vertices)
    for _ in range(count):
        weights = torch.rand(len(vertices), generator=generator, dtype=torch.float64)
        weights /= weights.sum()
        points.append(sum(w * v for w, v in zip(weights, vertices)))
    return points


# ---------------------------------------------------------------------------------------- generic properties
def test_lmo_returns_a_feasible_point_on_the_boundary(constraint: ConstraintSet) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        vertex = constraint.lmo(torch.randn(constraint.shape, generator=generator))
        assert vertex.shape == constraint.shape
        assert constraint.is_feasible(vertex)
        torch.testing.assert_close(
            constraint.norm(vertex), constraint.radius_tensor(vertex), rtol=1e-4, atol=1e-5
        )


def test_lmo_beats_every_random_feasible_point(constraint: ConstraintSet) -> None:
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(constraint.shape, generator=generator, dtype=torch.float64)
    best = float((grad * constraint.lmo(grad)).sum())
    others = [float((grad * x).sum()) for x in random_feasible_points(constraint, 30, generator)]
    assert best <= min(others) + 1e-9


def test_lmo_maps_zero_to_zero_and_ignores_positive_scale(constraint: ConstraintSet) -> None:
    assert torch.count_nonzero(constraint.lmo(torch.zeros(constraint.shape))) == 0
    grad = torch.randn(constraint.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(constraint.lmo(grad * 37.5), constraint.lmo(grad))


def test_diameter_is_attained_by_antipodal_vertices(constraint: ConstraintSet) -> None:
    # Every set here is centrally symmetric, so lmo(-g) = -lmo(g) and ||lmo(g) - lmo(-g)|| <= D, with
    # equality for a dense generic g except for 1 < p < inf (those balls reach D only at sign vectors).
    grad = torch.randn(constraint.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spread = float(torch.linalg.vector_norm(constraint.lmo(grad) - constraint.lmo(-grad)))
    assert spread <= constraint.diameter * (1 + 1e-6)
    if not (isinstance(constraint, LpBall) and 1 < constraint.p < math.inf and constraint.p != 2):
        assert spread == pytest.approx(constraint.diameter, rel=1e-6)


def test_from_diameter_round_trips(constraint: ConstraintSet) -> None:
    options = {name: getattr(constraint, name) for name in ("p", "k") if hasattr(constraint, name)}
    if isinstance(constraint, GroupKSupportNormBall):
        options["group_sizes"] = constraint.group_sizes
    if isinstance(constraint, NuclearNormBall):
        options.pop("k")
    rebuilt = type(constraint).from_diameter(constraint.shape, 12.5, **options)
    assert rebuilt.diameter == pytest.approx(12.5)


def test_make_feasible_rescales_only_infeasible_points(constraint: ConstraintSet) -> None:
    generator = torch.Generator().manual_seed(4)
    inside = random_feasible_points(constraint, 3, generator)[-1]
    torch.testing.assert_close(constraint.make_feasible(inside), inside)
    outside = 100.0 * torch.randn(constraint.shape, generator=generator, dtype=torch.float64)
    assert not constraint.is_feasible(outside)
    rescaled = constraint.make_feasible(outside)
    assert constraint.is_feasible(rescaled)
    # Rescaling keeps the direction: the result is a positive multiple of the input (per row for row-wise sets).
    ratio = rescaled / outside
    if isinstance(constraint, (RowwiseL1Ball, RowwiseKSparsePolytope, RowwiseKSupportNormBall)):
        assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio))
        torch.testing.assert_close(constraint.norm(rescaled), constraint.radius_tensor(rescaled))
    else:
        assert torch.allclose(ratio, ratio.reshape(-1)[0].expand_as(ratio))
        assert float(constraint.norm(rescaled)) == pytest.approx(constraint.radius, rel=1e-6)
    assert torch.count_nonzero(constraint.make_feasible(torch.zeros(constraint.shape))) == 0


def test_shape_mismatch_is_reported(constraint: ConstraintSet) -> None:
    with pytest.raises(ValueError, match="built for shape"):
        constraint.lmo(torch.randn(constraint.numel + 1))


# ---------------------------------------------------------------------------------------- optimality, set by set
def _value(grad: torch.Tensor, vertex: torch.Tensor) -> float:
    return float((grad * vertex).sum())


def test_l1_and_linf_lmo_match_brute_force_over_vertices() -> None:
    grad = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    l1 = LpBall((6,), 1.5, p=1)
    l1_vertices = [s * 1.5 * torch.eye(6, dtype=torch.float64)[i] for i in range(6) for s in (-1, 1)]
    assert _value(grad, l1.lmo(grad)) == pytest.approx(min(_value(grad, v) for v in l1_vertices))
    linf = LpBall((6,), 0.5, p=math.inf)
    linf_vertices = [
        0.5 * torch.tensor(signs, dtype=torch.float64) for signs in itertools.product((-1, 1), repeat=6)
    ]
    assert _value(grad, linf.lmo(grad)) == pytest.approx(min(_value(grad, v) for v in linf_vertices))


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_lp_lmo_attains_minus_radius_times_dual_norm(p: float) -> None:
    grad = torch.randn(3, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    q = p / (p - 1)
    ball = LpBall(grad.shape, 2.0, p=p)
    assert _value(grad, ball.lmo(grad)) == pytest.approx(-2.0 * float(torch.linalg.vector_norm(grad, ord=q)))


def test_ksparse_lmo_matches_brute_force_over_vertices() -> None:
    grad = torch.randn(6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    polytope = KSparsePolytope((6,), 0.8, k=2)
    vertices = []
    for support in itertools.combinations(range(6), 2):
        for signs in itertools.product((-1, 1), repeat=2):
            vertex = torch.zeros(6, dtype=torch.float64)
            vertex[list(support)] = 0.8 * torch.tensor(signs, dtype=torch.float64)
            vertices.append(vertex)
    assert _value(grad, polytope.lmo(grad)) == pytest.approx(min(_value(grad, v) for v in vertices))
    assert torch.count_nonzero(polytope.lmo(grad)) == 2


def test_ksupport_lmo_matches_brute_force_over_supports() -> None:
    grad = torch.randn(7, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ball = KSupportNormBall((7,), 1.7, k=3)
    # On a fixed support S the best point of {||v||_2 <= r} is -r g_S / ||g_S||, worth -r ||g_S||.
    brute = min(
        -1.7 * float(torch.linalg.vector_norm(grad[list(s)])) for s in itertools.combinations(range(7), 3)
    )
    vertex = ball.lmo(grad)
    assert _value(grad, vertex) == pytest.approx(brute)
    assert torch.count_nonzero(vertex) == 3


def test_group_lmo_matches_brute_force_over_group_subsets() -> None:
    grad = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ball = GroupKSupportNormBall(grad.shape, 1.2, k=2)
    brute = min(
        -1.2 * float(torch.linalg.vector_norm(grad[list(groups)]))
        for groups in itertools.combinations(range(5), 2)
    )
    vertex = ball.lmo(grad)
    assert _value(grad, vertex) == pytest.approx(brute)
    assert int((vertex.reshape(5, -1).abs().sum(dim=1) > 0).sum()) == 2


def test_group_lmo_keeps_exactly_k_groups_on_ties() -> None:
    # Equal filter norms: a ">= threshold" rule (the SFW code) would keep all six.
    grad = torch.ones(6, 4)
    vertex = GroupKSupportNormBall(grad.shape, 1.0, k=2).lmo(grad)
    assert int((vertex.abs().sum(dim=1) > 0).sum()) == 2
    assert torch.count_nonzero(KSupportNormBall((6, 4), 1.0, k=5).lmo(grad)) == 5


def test_group_segments_match_per_tensor_groups() -> None:
    # A global set over two weights (3 and 2 filters of different sizes) selects across both tensors.
    first = torch.randn(3, 4, generator=torch.Generator().manual_seed(10))
    second = torch.randn(2, 6, generator=torch.Generator().manual_seed(11)) * 3
    flat = torch.cat([first.reshape(-1), second.reshape(-1)])
    ball = GroupKSupportNormBall(flat.shape, 1.0, k=2, group_sizes=[4, 4, 4, 6, 6])
    vertex = ball.lmo(flat)
    norms = ball.group_norms(flat)
    torch.testing.assert_close(norms[:3], torch.linalg.vector_norm(first, dim=1))
    torch.testing.assert_close(norms[3:], torch.linalg.vector_norm(second, dim=1))
    chosen = set(torch.topk(norms, 2).indices.tolist())
    kept = {
        index
        for index, group in enumerate(torch.split(vertex, [4, 4, 4, 6, 6]))
        if torch.count_nonzero(group)
    }
    assert kept == chosen
    with pytest.raises(ValueError, match="sum to"):
        GroupKSupportNormBall((20,), 1.0, k=2, group_sizes=[5, 5])


def test_spectral_lmos_match_the_closed_form() -> None:
    grad = torch.randn(6, 9, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    singular = torch.linalg.svdvals(grad)
    nuclear = NuclearNormBall(grad.shape, 2.0, svd_iterations=30)
    vertex = nuclear.lmo(grad)
    assert _value(grad, vertex) == pytest.approx(-2.0 * float(singular[0]), rel=1e-6)
    assert int(torch.linalg.matrix_rank(vertex)) == 1
    spectral = SpectralKSupportNormBall(grad.shape, 2.0, k=3, svd_iterations=30)
    vertex = spectral.lmo(grad)
    assert _value(grad, vertex) == pytest.approx(
        -2.0 * float(torch.linalg.vector_norm(singular[:3])), rel=1e-6
    )
    assert int(torch.linalg.matrix_rank(vertex)) == 3


def test_rowwise_lmos_are_the_sum_of_per_row_optima() -> None:
    grad = torch.randn(4, 5, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    radii = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    l1 = RowwiseL1Ball(grad.shape, radii)
    vertex = l1.lmo(grad)
    assert _value(grad, vertex) == pytest.approx(-float((radii * grad.abs().amax(dim=1)).sum()), rel=1e-6)
    assert torch.equal(torch.count_nonzero(vertex, dim=1), torch.ones(4, dtype=torch.long))
    top2 = grad.abs().topk(2, dim=1).values
    ksupport = RowwiseKSupportNormBall(grad.shape, radii, k=2)
    vertex = ksupport.lmo(grad)
    assert _value(grad, vertex) == pytest.approx(
        -float((radii * torch.linalg.vector_norm(top2, dim=1)).sum()), rel=1e-6
    )
    assert bool((torch.count_nonzero(vertex, dim=1) == 2).all())
    ksparse = RowwiseKSparsePolytope(grad.shape, radii, k=2)
    vertex = ksparse.lmo(grad)
    assert _value(grad, vertex) == pytest.approx(-float((radii * top2.sum(dim=1)).sum()), rel=1e-6)


def test_rowwise_make_feasible_rescales_each_offending_row_only() -> None:
    ball = RowwiseL1Ball((3, 4), [1.0, 2.0, 3.0])
    x = torch.tensor([[0.25, 0.25, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]])
    fixed = ball.make_feasible(x)
    torch.testing.assert_close(fixed[0], x[0])
    torch.testing.assert_close(fixed[1], torch.tensor([2.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(fixed[2], x[2] / 2)
    with pytest.raises(ParameterError, match="radius"):
        RowwiseL1Ball((3, 4), [1.0, 2.0])
    with pytest.raises(ParameterError, match="positive"):
        RowwiseL1Ball((3, 4), [1.0, -2.0, 1.0])


# ---------------------------------------------------------------------------------------- norms
def test_ksupport_norm_interpolates_between_l1_and_l2() -> None:
    x = torch.randn(5, 9, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    torch.testing.assert_close(ksupport_norm_rows(x, 1), x.abs().sum(dim=1))
    torch.testing.assert_close(ksupport_norm_rows(x, 9), torch.linalg.vector_norm(x, dim=1))
    sparse = torch.zeros(9, dtype=torch.float64)
    sparse[[1, 4, 6]] = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    assert float(ksupport_norm_rows(sparse[None], 3)) == pytest.approx(math.sqrt(14))
    # The constant vector: ||1||_(k-sp) = n / sqrt(k).
    assert float(ksupport_norm_rows(torch.ones(1, 8), 2)) == pytest.approx(8 / math.sqrt(2), rel=1e-6)


def test_ksupport_norm_is_the_gauge_of_the_lmo_ball() -> None:
    # Hoelder for the pair (k-support norm, top-k L2 dual norm): <u, x> <= ||x|| ||u||_(k) for every u,
    # with equality for u = the LMO direction of -x scaled (supporting hyperplane at x / ||x||).
    generator = torch.Generator().manual_seed(15)
    for k in (2, 4, 6):
        ball = KSupportNormBall((12,), 1.0, k=k)
        x = torch.randn(12, generator=generator, dtype=torch.float64) * torch.rand(
            12, generator=generator, dtype=torch.float64
        )
        norm = float(ball.norm(x))
        for _ in range(200):
            u = torch.randn(12, generator=generator, dtype=torch.float64)
            dual = float(torch.linalg.vector_norm(u.abs().topk(k).values))
            assert float(u @ x) <= norm * dual + 1e-9
        # Lower bound from the points of the ball: convex combinations of vertices have norm <= 1 ...
        for point in random_feasible_points(ball, 10, generator):
            assert float(ball.norm(point)) <= 1 + 1e-9
        # ... and x / norm lies on the boundary: it is a convex combination of k-sparse unit vectors
        # (a greedy decomposition gives an upper bound on the gauge that must not be below it).
        magnitudes = x.abs().sort(descending=True).values
        chunks = torch.split(magnitudes, k)
        assert norm <= sum(float(torch.linalg.vector_norm(c)) for c in chunks) + 1e-9


def test_group_and_spectral_norms_reduce_to_known_norms() -> None:
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    rows = torch.linalg.vector_norm(x, dim=1)
    # k = 0.2 of 5 groups (or of rank 5) is one; k = 1 would be the fraction 1, i.e. all five.
    assert float(GroupKSupportNormBall(x.shape, 1.0, k=0.2).norm(x)) == pytest.approx(float(rows.sum()))
    assert float(GroupKSupportNormBall(x.shape, 1.0, k=5).norm(x)) == pytest.approx(
        float(torch.linalg.vector_norm(x))
    )
    singular = torch.linalg.svdvals(x)
    assert float(NuclearNormBall(x.shape, 1.0).norm(x)) == pytest.approx(float(singular.sum()))
    assert float(SpectralKSupportNormBall(x.shape, 1.0, k=0.2).norm(x)) == pytest.approx(
        float(singular.sum())
    )
    assert float(SpectralKSupportNormBall(x.shape, 1.0, k=5).norm(x)) == pytest.approx(
        float(torch.linalg.vector_norm(x))
    )
    assert float(KSparsePolytope((30,), 1.0, k=3).norm(x.reshape(-1))) == pytest.approx(
        max(float(x.abs().max()), float(x.abs().sum()) / 3)
    )


# ---------------------------------------------------------------------------------------- sizes and k
def test_radius_for_diameter_per_set() -> None:
    assert LpBall.radius_for_diameter(10.0, (4, 25), p=1) == pytest.approx(5.0)
    assert LpBall.radius_for_diameter(10.0, (4, 25), p=2) == pytest.approx(5.0)
    assert LpBall.radius_for_diameter(10.0, (4, 25), p=math.inf) == pytest.approx(0.5)
    assert LpBall.radius_for_diameter(10.0, (64,), p=3) == pytest.approx(5.0 / 64 ** (1 / 6))
    assert LpBall.radius_for_diameter(10.0, (64,), p=1.5) == pytest.approx(5.0)
    assert KSparsePolytope.radius_for_diameter(10.0, (100,), k=0.25) == pytest.approx(1.0)
    assert KSupportNormBall.radius_for_diameter(10.0, (100,), k=0.25) == pytest.approx(5.0)
    assert SpectralKSupportNormBall.radius_for_diameter(10.0, (8, 8), k=2) == pytest.approx(5.0)
    # A product of 4 row balls with one shared radius: D = sqrt(4) * 2r.
    assert RowwiseL1Ball.radius_for_diameter(8.0, (4, 5)) == pytest.approx(2.0)
    assert RowwiseKSparsePolytope.radius_for_diameter(8.0, (4, 16), k=4) == pytest.approx(1.0)


def test_resolve_k_accepts_fractions_and_counts() -> None:
    assert resolve_k(0.1, 1000) == 100
    assert resolve_k(1, 1000) == 1000  # k = 1 is the full dimension (a fraction), as in the SFW code
    assert resolve_k(1e-6, 1000) == 1
    assert resolve_k(5, 1000) == 5
    assert resolve_k(5000, 1000) == 1000
    for bad in (0, -0.5, 2.5, "3"):
        with pytest.raises(ParameterError, match="^k: "):
            resolve_k(bad, 1000)


def test_invalid_sets_are_rejected_before_any_compute() -> None:
    with pytest.raises(ParameterError, match="positive finite"):
        LpBall((3,), 0.0)
    with pytest.raises(ParameterError, match="p >= 1"):
        LpBall((3,), 1.0, p=0.5)
    with pytest.raises(ParameterError, match="group_ksupport"):
        GroupKSupportNormBall((5,), 1.0)
    with pytest.raises(ParameterError, match="spectral"):
        SpectralKSupportNormBall((5,), 1.0)
    with pytest.raises(ParameterError, match="svd_iterations"):
        NuclearNormBall((5, 5), 1.0, svd_iterations=0)


# ---------------------------------------------------------------------------------------- partial SVD
def test_top_right_singular_basis_spans_the_top_singular_subspace() -> None:
    generator = torch.Generator().manual_seed(17)
    u, _, v = torch.linalg.svd(torch.randn(40, 40, generator=generator, dtype=torch.float64))
    spectrum = torch.tensor([10.0, 8.0, 6.0] + [1.0 / (i + 1) for i in range(37)], dtype=torch.float64)
    matrix = (u * spectrum) @ v
    basis = top_right_singular_basis(matrix, 3, iterations=10)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(torch.linalg.svdvals(matrix @ basis), spectrum[:3])
    torch.testing.assert_close(
        (matrix @ basis) @ basis.T, (u[:, :3] * spectrum[:3]) @ v[:3, :], rtol=1e-6, atol=1e-6
    )
    # k = full rank is exact after one iteration.
    wide = matrix[:5]
    basis = top_right_singular_basis(wide, 5, iterations=1)
    torch.testing.assert_close((wide @ basis) @ basis.T, wide)


def test_spectral_lmo_warm_start_converges_over_repeated_calls() -> None:
    # One iteration per call: the warm start carries the subspace from call to call (the gradient
    # changes slowly between steps), so repeated calls reach the exact LMO.
    grad = torch.randn(30, 50, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    ball = SpectralKSupportNormBall(grad.shape, 1.0, k=4, svd_iterations=1)
    exact = -float(torch.linalg.vector_norm(torch.linalg.svdvals(grad)[:4]))
    values = [_value(grad, ball.lmo(grad)) for _ in range(40)]
    assert values[-1] == pytest.approx(exact, rel=1e-6)
    assert values[-1] <= values[0] + 1e-12


# ---------------------------------------------------------------------------------------- top-k on long vectors
@pytest.mark.parametrize("case", ["gaussian", "periodic", "mostly_zero", "heavy_tail"])
def test_candidate_top_k_selects_the_same_entries_as_topk(case: str) -> None:
    # Long rows take the sampled-bound path; whatever the data, it must pick the exact top k.
    from consparse.optim.constraints.ksparse import CANDIDATE_TOPK_MIN_SIZE, SAMPLE_STRIDE, top_k_indices_rows

    n = CANDIDATE_TOPK_MIN_SIZE * 2
    generator = torch.Generator().manual_seed(19)
    values = torch.randn(n, generator=generator)
    if case == "periodic":
        # Large entries exactly on the sampling stride (the sample sees only them) and between it.
        values = torch.zeros(n)
        values[::SAMPLE_STRIDE] = 5.0 + torch.rand(values[::SAMPLE_STRIDE].shape, generator=generator)
        values[1::SAMPLE_STRIDE] = torch.rand(values[1::SAMPLE_STRIDE].shape, generator=generator)
    elif case == "mostly_zero":
        values = torch.zeros(n)
        values[torch.randperm(n, generator=generator)[:1000]] = torch.randn(1000, generator=generator)
    elif case == "heavy_tail":
        values = torch.randn(n, generator=generator) ** 5
    for k in (10, 3000, n // 10, n // 3):
        chosen = top_k_indices_rows(values[None], k)[0]
        assert chosen.numel() == k and chosen.unique().numel() == k
        # Same multiset of magnitudes as torch.topk (the index sets may differ only among ties).
        torch.testing.assert_close(
            values.abs()[chosen].sort().values, torch.topk(values.abs(), k).values.sort().values
        )


def test_rowwise_radius_on_the_device_follows_a_new_radius() -> None:
    ball = RowwiseL1Ball((2, 3), [1.0, 2.0])
    like = torch.zeros(2, 3)
    torch.testing.assert_close(ball.radius_tensor(like), torch.tensor([1.0, 2.0]))
    ball.radius = ball._validated_radius([3.0, 4.0])
    torch.testing.assert_close(ball.radius_tensor(like), torch.tensor([3.0, 4.0]))
