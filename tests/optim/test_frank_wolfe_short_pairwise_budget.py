"""Frank-Wolfe extensions used by implicit_fw: the short step with backtracking, pairwise (away-atom)
steps on row-wise L1 balls, and row-wise support budgets (the LMO restricted by the iterate)."""

from __future__ import annotations

import itertools

import pytest
import torch

from consparse.errors import ParameterError
from consparse.optim import FrankWolfe
from consparse.optim.constraints import (
    KSupportNormBall,
    LpBall,
    RowwiseKSparsePolytope,
    RowwiseKSupportNormBall,
    RowwiseL1Ball,
)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quadratic(b: torch.Tensor):
    """``f(x) = 0.5 ||x - b||^2`` (curvature exactly 1) and a closure that sets its gradient."""

    def loss(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x.detach() - b).square().sum()

    def set_grad(x: torch.nn.Parameter) -> None:
        x.grad = (x.detach() - b).clone()

    return loss, set_grad


# ---------------------------------------------------------------------------------------- short step
def test_short_step_is_the_exact_line_minimiser_when_l_is_the_curvature() -> None:
    b = torch.randn(6, 4, generator=generator(0))
    x = torch.nn.Parameter(0.01 * torch.randn(6, 4, generator=generator(1)))
    ball = RowwiseL1Ball(x.shape, 3.0)
    loss, set_grad = quadratic(b)
    optimizer = FrankWolfe([{"params": [x], "constraint": ball}], momentum=0.0, step_rule="short", lipschitz=1.0)
    set_grad(x)
    start, grad = x.detach().clone(), x.grad.clone()
    direction = ball.lmo(grad) - start
    gamma = float(-(grad * direction).sum() / direction.square().sum())
    assert 0 < gamma < 1
    optimizer.step(evaluate=lambda: loss(x))
    torch.testing.assert_close(x.detach(), start + gamma * direction)
    assert optimizer.last_line_search["evaluations"] == 2  # f(theta) and one accepted trial
    assert optimizer.last_line_search["lipschitz"] == pytest.approx(0.9)


def test_backtracking_raises_a_too_small_lipschitz_estimate_until_the_decrease_holds() -> None:
    b = 3.0 * torch.randn(10, generator=generator(2))
    x = torch.nn.Parameter(torch.zeros(10))
    loss, set_grad = quadratic(b)
    optimizer = FrankWolfe(
        [{"params": [x], "constraint": LpBall((10,), 1.0, p=1)}], momentum=0.0, step_rule="short", lipschitz=1e-3
    )
    values = [float(loss(x))]
    for _ in range(30):
        set_grad(x)
        optimizer.step(evaluate=lambda: loss(x))
        values.append(float(loss(x)))
    # For a quadratic of curvature 1 the decrease test holds iff L >= 1 (up to the float32 margin).
    assert optimizer.last_line_search["lipschitz"] > 0.1, "raised from 1e-3 towards the curvature 1"
    assert all(later <= earlier + 1e-5 for earlier, later in zip(values, values[1:])), "the loss never increases"
    assert values[-1] < values[0] - 1.0


def test_a_short_step_along_an_ascent_direction_is_skipped() -> None:
    x = torch.nn.Parameter(torch.tensor([0.5, 0.0]))
    ball = LpBall((2,), 1.0, p=1)
    # momentum points one way, the current raw gradient the other: <g, d> > 0, so no step.
    optimizer = FrankWolfe([{"params": [x], "constraint": ball}], momentum=0.9, step_rule="short")
    x.grad = torch.tensor([0.0, 5.0])
    optimizer.step(evaluate=lambda: torch.tensor(0.0))
    before = x.detach().clone()
    x.grad = torch.tensor([0.0, -10.0])
    calls = []
    optimizer.step(evaluate=lambda: calls.append(1) or torch.tensor(0.0))
    assert torch.equal(x.detach(), before) and not calls
    assert optimizer.last_line_search["step"] == 0.0


def test_the_short_step_needs_an_evaluate_function() -> None:
    x = torch.nn.Parameter(torch.zeros(3))
    optimizer = FrankWolfe([{"params": [x], "constraint": LpBall((3,), 1.0)}], step_rule="short")
    x.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="evaluate"):
        optimizer.step()


def test_the_short_step_is_one_line_search_over_all_short_groups() -> None:
    b1, b2 = torch.randn(4, 3, generator=generator(3)), torch.randn(2, 5, generator=generator(4))
    x1, x2 = torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(2, 5))
    sets = RowwiseL1Ball(x1.shape, 0.7), RowwiseL1Ball(x2.shape, 0.4)
    optimizer = FrankWolfe(
        [{"params": [x1], "constraint": sets[0]}, {"params": [x2], "constraint": sets[1]}],
        momentum=0.0,
        step_rule="short",
    )
    x1.grad, x2.grad = -b1.clone(), -b2.clone()
    evaluations = []

    def evaluate() -> torch.Tensor:
        evaluations.append(1)
        return 0.5 * ((x1.detach() - b1).square().sum() + (x2.detach() - b2).square().sum())

    optimizer.step(evaluate=evaluate)
    d1, d2 = sets[0].lmo(-b1), sets[1].lmo(-b2)
    gamma = min(float((b1 * d1).sum() + (b2 * d2).sum()) / float(d1.square().sum() + d2.square().sum()), 1.0)
    torch.testing.assert_close(x1.detach(), gamma * d1)
    torch.testing.assert_close(x2.detach(), gamma * d2)
    assert len(evaluations) == 2


# ---------------------------------------------------------------------------------------- pairwise steps
def decomposition(x: torch.Tensor, radius: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row: every atom (sign(x_j) r e_j and the origin) with its weight in x."""
    rows = []
    for i in range(x.shape[0]):
        atoms = [(torch.zeros(x.shape[1]), 1 - x[i].abs().sum() / radius[i])]
        for j in torch.nonzero(x[i]).flatten():
            atom = torch.zeros(x.shape[1])
            atom[j] = torch.sign(x[i, j]) * radius[i]
            atoms.append((atom, x[i, j].abs() / radius[i]))
        rows.append(atoms)
    return rows


def test_away_vertex_is_the_best_active_atom_and_its_weight() -> None:
    radius = torch.tensor([1.0, 2.0, 0.5, 1.5])
    ball = RowwiseL1Ball((4, 5), radius)
    x = torch.tensor(
        [[0.2, -0.3, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0], [0.25, 0.0, -0.25, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0, 0.0]]
    )
    grad = torch.randn(4, 5, generator=generator(5))
    atom, weight = ball.away_vertex(grad, x)
    for i, atoms in enumerate(decomposition(x, radius)):
        active = [(a, w) for a, w in atoms if w > 1e-7]
        best = max(float((grad[i] * a).sum()) for a, _ in active)
        assert float((grad[i] * atom[i]).sum()) == pytest.approx(best)
        assert float(weight[i, 0]) == pytest.approx(float(next(w for a, w in active if torch.equal(a, atom[i]))))
    assert torch.equal(atom[1], torch.zeros(5)) and float(weight[1, 0]) == 1.0  # a zero row: the origin
    assert float(weight[2, 0]) > 0  # row 2 sits on its sphere: the origin is not active there


def test_pairwise_iterates_stay_feasible_and_drop_steps_give_exact_zeros() -> None:
    x = torch.nn.Parameter(torch.zeros(8, 12))
    ball = RowwiseL1Ball(x.shape, torch.linspace(0.2, 1.0, 8))
    optimizer = FrankWolfe(
        [{"params": [x], "constraint": ball}], lr=2.0, momentum=0.5, direction="pairwise", rescale="gradient"
    )
    removed = 0
    for seed in range(150):
        before = x.detach() != 0
        x.grad = torch.randn(8, 12, generator=generator(seed))
        optimizer.step()
        now = x.detach() != 0
        removed += int((before & ~now).sum())
        assert ball.is_feasible(x.detach(), rtol=1e-6, atol=1e-7), f"infeasible after step {seed}"
        assert int((now & ~before).sum(dim=1).max()) <= 1, "one new entry per row at most"
    assert removed > 0, "pairwise steps remove atoms"


def test_pairwise_steps_converge_faster_and_sparser_than_frank_wolfe_on_a_lasso() -> None:
    # min 0.5 ||M w - z||^2 per row over L1 balls, correlated columns, sparse truth: Frank-Wolfe's steps
    # shrink every atom but keep them all (sublinear rate); pairwise steps move weight between atoms and
    # drop the useless ones (linear rate, Lacoste-Julien & Jaggi 2015).
    M = torch.randn(60, 30, generator=generator(6)) + 3.0 * torch.randn(60, 1, generator=generator(11))
    truth = torch.zeros(5, 30)
    truth[:, :3] = torch.randn(5, 3, generator=generator(7))
    Z = truth @ M.T
    radius = truth.abs().sum(dim=1)

    def solve(direction: str) -> tuple[torch.Tensor, list[float]]:
        w = torch.nn.Parameter(torch.zeros(5, 30))
        ball = RowwiseL1Ball(w.shape, radius)
        optimizer = FrankWolfe(
            [{"params": [w], "constraint": ball, "name": "w"}], momentum=0.0, step_rule="short", direction=direction
        )
        gaps = []
        for _ in range(300):
            residual = w.detach() @ M.T - Z
            w.grad = residual @ M
            optimizer.step(evaluate=lambda: 0.5 * (w.detach() @ M.T - Z).square().sum())
            gaps.append(float(optimizer.frank_wolfe_gaps()["w"]))
            assert ball.is_feasible(w.detach(), rtol=1e-5, atol=1e-6)
        return w.detach(), gaps

    fw, fw_gaps = solve("frank_wolfe")
    pairwise, pairwise_gaps = solve("pairwise")
    assert min(pairwise_gaps[-20:]) < 1e-3 * pairwise_gaps[0]
    assert min(pairwise_gaps[-20:]) < 0.1 * min(fw_gaps[-20:])
    assert int(torch.count_nonzero(pairwise)) < int(torch.count_nonzero(fw))


def test_pairwise_needs_a_set_with_away_atoms() -> None:
    x = torch.nn.Parameter(torch.zeros(3, 4))
    with pytest.raises(ParameterError, match="direction"):
        FrankWolfe([{"params": [x], "constraint": KSupportNormBall(x.shape, 1.0, k=2)}], direction="pairwise")
    with pytest.raises(ParameterError, match="direction"):
        FrankWolfe([{"params": [x], "constraint": LpBall(x.shape, 1.0)}], direction="sideways")


# ---------------------------------------------------------------------------------------- support budgets
def best_allowed(grad: torch.Tensor, x: torch.Tensor, budget: int, vertices: list[torch.Tensor]) -> float:
    """Brute force, one row: min <g, v> over vertices adding at most ``budget - |supp x|`` new entries."""
    support = x != 0
    room = max(budget - int(support.sum()), 0)
    allowed = [v for v in vertices if int(((v != 0) & ~support).sum()) <= room]
    return min(float((grad * v).sum()) for v in allowed)


def l1_vertices(cols: int, radius: float) -> list[torch.Tensor]:
    return [s * radius * torch.eye(cols)[j] for j in range(cols) for s in (1.0, -1.0)]


def ksparse_vertices(cols: int, k: int, tau: float) -> list[torch.Tensor]:
    vertices = []
    for support in itertools.combinations(range(cols), k):
        for signs in itertools.product((1.0, -1.0), repeat=k):
            v = torch.zeros(cols)
            v[list(support)] = tau * torch.tensor(signs)
            vertices.append(v)
    return vertices


@pytest.mark.parametrize("kind", ["l1", "ksparse"])
@pytest.mark.parametrize("budget", [2, 3, 4])
def test_budgeted_lmo_matches_brute_force(kind: str, budget: int) -> None:
    rows, cols = 6, 6
    grad = torch.randn(rows, cols, generator=generator(8))
    x = torch.zeros(rows, cols)
    for i in range(rows):  # supports of size 0..5, on random columns
        columns = torch.randperm(cols, generator=generator(10 + i))[:i]
        x[i, columns] = 0.01 * (i + 1)
    if kind == "l1":
        constraint, vertices = RowwiseL1Ball((rows, cols), 1.0, support_budget=budget), l1_vertices(cols, 1.0)
    else:
        constraint = RowwiseKSparsePolytope((rows, cols), 0.5, k=2, support_budget=budget)
        vertices = ksparse_vertices(cols, 2, 0.5)
    vertex = constraint.lmo_at(grad, x)
    for i in range(rows):
        assert float((grad[i] * vertex[i]).sum()) == pytest.approx(best_allowed(grad[i], x[i], budget, vertices), abs=1e-6)
        assert int(((vertex[i] != 0) | (x[i] != 0)).sum()) <= max(budget, int((x[i] != 0).sum()))


def test_a_per_row_budget_set_between_steps_restricts_those_rows_only() -> None:
    grad = torch.randn(3, 8, generator=generator(9))
    x = torch.zeros(3, 8)
    x[:, 0] = 0.1
    ball = RowwiseKSupportNormBall((3, 8), 1.0, k=3)
    ball.support_budget = torch.tensor([1, 2, 8])
    vertex = ball.lmo_at(grad, x)
    assert torch.equal(vertex[0] != 0, x[0] != 0), "a full row stays on its support"
    assert int(((vertex[1] != 0) & (x[1] == 0)).sum()) <= 1
    torch.testing.assert_close(vertex[2], ball.lmo(grad)[2])
    ball.support_budget = None
    torch.testing.assert_close(ball.lmo_at(grad, x), ball.lmo(grad))


def test_frank_wolfe_from_zero_never_exceeds_a_row_budget() -> None:
    x = torch.nn.Parameter(torch.zeros(5, 20))
    ball = RowwiseKSparsePolytope(x.shape, 0.1, k=2, support_budget=0.3)
    optimizer = FrankWolfe([{"params": [x], "constraint": ball}], lr=0.1, momentum=0.0, rescale="none")
    for seed in range(80):
        x.grad = torch.randn(5, 20, generator=generator(seed))
        optimizer.step()
        assert int((x.detach() != 0).sum(dim=1).max()) <= 6
    assert int((x.detach() != 0).sum(dim=1).min()) == 6, "the budget is used"
