"""``method=implicit_fw`` (and its dense baseline ``implicit_pgd``): well-posed iterates, the seeded
start, row growth, the FW gap on a convex instance, the capacity rule, full runs to results.json and
config errors raised before any compute."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from consparse.checkpoint_io import load_checkpoint
from consparse.compress.export import load_exported
from consparse.config import instantiate_node
from consparse.errors import ConfigError
from consparse.methods import build_method
from consparse.methods.implicit_fw import ImplicitFWMethod
from consparse.models import build_model
from consparse.models.implicit import ImplicitModel
from consparse.models.implicit_deployed import DeployedImplicitModel
from consparse.optim import FrankWolfe
from consparse.optim.constraints import RowwiseKSparsePolytope, RowwiseL1Ball
from consparse.report.results import read_results, validate_results
from consparse.train import run

SMALL = ("model=implicit", "dataset=digits", "model.state_size=24", "model.kappa=0.5")
L1_ROWS = ("method.constraints.B.kind=l1", "method.constraints.B.k=null", "method.constraints.B.radius=10",
           "method.constraints.C.kind=l1", "method.constraints.C.k=null", "method.constraints.C.radius=10",
           "method.constraints.D.kind=l1", "method.constraints.D.k=null", "method.constraints.D.radius=2")


def build(make_config, *overrides: str, method: str = "implicit_fw"):
    torch.manual_seed(0)  # the seed of B is drawn from the global stream (seeded by train.run in a real run)
    cfg = make_config(f"method={method}", *SMALL, *overrides)
    datamodule = instantiate_node(cfg.dataset)
    return build_method(cfg.method, build_model(cfg.model, datamodule.info), datamodule.info), datamodule


def batches(datamodule, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    out = []
    while len(out) < count:
        try:
            out.append(next(loader))
        except StopIteration:
            loader = iter(datamodule.train_dataloader())
    return out


def train(method: ImplicitFWMethod, data, on_step=None) -> list[float]:
    """Plain loop over the method's own param groups, hooks and loss (what Lightning calls per step)."""
    optimizer = method.optimizer_factory(method.parameter_groups())
    losses = []
    for x, y in data:
        optimizer.zero_grad()
        loss = method.loss(method(x), y)
        loss.backward()
        method.on_before_optimizer_step(optimizer)
        optimizer.step(evaluate=lambda: method.loss(method(x), y).detach())
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(method)
    return losses


# ---------------------------------------------------------------------------------------- the LMO
def row_vertices(cols: int, k: int, radius: float) -> torch.Tensor:
    """Every vertex of one row's set: k signed entries of size ``radius`` (k = 1: the L1 ball)."""
    vertices = []
    for support in itertools.combinations(range(cols), k):
        for signs in itertools.product((1.0, -1.0), repeat=k):
            v = torch.zeros(cols, dtype=torch.float64)
            v[list(support)] = radius * torch.tensor(signs, dtype=torch.float64)
            vertices.append(v)
    return torch.stack(vertices)


@pytest.mark.parametrize("k", [1, 2], ids=["l1_rows", "ksparse_rows_k2"])
def test_rowwise_lmo_is_the_best_vertex_of_the_product_set_by_brute_force(k: int) -> None:
    # Enumerates the vertices of the whole matrix set (every combination of one vertex per row), so it
    # checks the per-row decomposition of the LMO rather than assuming it.
    rows, cols, radii = 3, 4, [0.5, 1.0, 2.0]
    grad = torch.randn(rows, cols, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    per_row = [row_vertices(cols, k, r) for r in radii]
    matrices = torch.stack([torch.stack(choice) for choice in itertools.product(*per_row)])
    values = (matrices * grad).sum(dim=(1, 2))
    best = matrices[int(values.argmin())]
    radius = torch.tensor(radii, dtype=torch.float64)
    constraint = RowwiseL1Ball(grad.shape, radius) if k == 1 else RowwiseKSparsePolytope(grad.shape, radius, k=k)
    vertex = constraint.lmo(grad)
    assert float((vertex * grad).sum()) == pytest.approx(float(values.min()), rel=1e-12)
    torch.testing.assert_close(vertex, best)


# ---------------------------------------------------------------------------------------- iterates
@pytest.mark.parametrize(
    ("rule", "direction"),
    [("lr", "frank_wolfe"), ("sublinear", "frank_wolfe"), ("short", "frank_wolfe"), ("lr", "pairwise")],
)
def test_every_iterate_is_well_posed_without_projection(make_config, rule: str, direction: str) -> None:
    method, datamodule = build(
        make_config, *L1_ROWS, f"method.optimizer.step_rule={rule}", f"method.optimizer.direction={direction}",
        "method.optimizer.lr=5", "method.target_density=null",
    )
    norms = []
    losses = train(method, batches(datamodule, 80), on_step=lambda m: norms.append(m.implicit.well_posedness()))
    assert max(norms) <= 0.5 * (1 + 1e-6), "||A||_inf <= kappa after every step"
    assert max(norms) > 0.2, "A is actually trained (from zero towards its boundary)"
    assert all(s.is_feasible(method.matrix(n).detach()) for n, s in method.sets.items())
    assert sum(losses[-10:]) / 10 < losses[0]


def test_exact_zero_is_stationary_and_the_seeded_start_trains(make_config) -> None:
    unseeded, datamodule = build(make_config, "method.seed.matrix=none")
    x, y = batches(datamodule, 1)[0]
    F.cross_entropy(unseeded(x), y).backward()
    model = unseeded.implicit
    assert all(float(getattr(model, n).grad.abs().max()) == 0.0 for n in "ABC"), "from zero only D would move"
    assert float(model.D.grad.abs().max()) > 0

    seeded, datamodule = build(make_config)
    assert torch.equal((seeded.implicit.B != 0).sum(dim=1), torch.ones(24, dtype=torch.long)), "one vertex per row"
    assert all(int(torch.count_nonzero(getattr(seeded.implicit, n))) == 0 for n in "ACD")
    F.cross_entropy(seeded(x), y).backward()
    assert float(seeded.implicit.C.grad.abs().max()) > 0
    losses = train(seeded, batches(datamodule, 150))
    assert sum(losses[-10:]) / 10 < 0.5 * losses[0], "the loss falls from the seeded start"


@pytest.mark.parametrize(("sets", "most"), [(L1_ROWS, 1), ((), 5)], ids=["l1_rows", "ksparse_rows_k5"])
def test_nonzeros_per_row_grow_by_at_most_one_vertex_per_step(make_config, sets, most: int) -> None:
    method, datamodule = build(make_config, *sets, "method.target_density=null")
    growth = []
    before = {}

    def record(m: ImplicitFWMethod) -> None:
        for name in m.sets:
            now = m.matrix(name).detach() != 0
            growth.append(int((now & ~before[name]).sum(dim=1).max()))
            before[name] = now

    for name in method.sets:
        before[name] = method.matrix(name).detach() != 0
    train(method, batches(datamodule, 80), on_step=record)
    assert max(growth) == most


def test_fw_gap_decreases_on_a_convex_least_squares_instance() -> None:
    # A and B fixed (a well-posed equilibrium), C and D fitted by least squares in row-wise L1 balls:
    # convex in (C, D); full-batch gradients.
    g = torch.Generator().manual_seed(0)
    n, p, k, m = 16, 10, 3, 100
    A = torch.randn(n, n, generator=g)
    A = 0.5 * A / A.abs().sum(dim=1, keepdim=True)
    model = ImplicitModel.from_matrices(A, 0.3 * torch.randn(n, p + 1, generator=g), torch.zeros(k, n),
                                        torch.zeros(k, p + 1), input_shape=[p], kappa=0.5)
    model.A.requires_grad_(False)
    model.B.requires_grad_(False)
    U = torch.randn(m, p, generator=g)
    Y = torch.randn(m, k, generator=g)

    def loss() -> torch.Tensor:
        return 0.5 * (model(U) - Y).square().sum(dim=1).mean()

    for rule in ("sublinear", "short"):
        model.C.data.zero_()
        model.D.data.zero_()
        optimizer = FrankWolfe(
            [{"params": [model.C], "constraint": RowwiseL1Ball(model.C.shape, 1.0), "name": "C"},
             {"params": [model.D], "constraint": RowwiseL1Ball(model.D.shape, 1.0), "name": "D"}],
            momentum=0.0, step_rule=rule,
        )
        gaps = []
        for _ in range(200):
            optimizer.zero_grad()
            loss().backward()
            optimizer.step(evaluate=lambda: loss().detach())
            gaps.append(sum(float(v) for v in optimizer.frank_wolfe_gaps().values()))
        assert min(gaps) >= -1e-5, "the gap of a convex problem is a certificate (never negative)"
        assert min(gaps[-50:]) < 0.05 * gaps[0], rule
        assert min(gaps[-50:]) < 0.5 * min(gaps[25:75]), f"{rule}: still decreasing"


# ---------------------------------------------------------------------------------------- capacity
def test_model_capacity_stops_growth_at_the_target(make_config) -> None:
    method, datamodule = build(make_config, "method.target_density=0.04")
    densities = []
    train(method, batches(datamodule, 100), on_step=lambda m: densities.append(m.density()))
    assert max(densities) <= 0.04
    assert densities[-1] > 0.035, "the budget is used up"
    assert method.frozen_steps > 0 and method.first_frozen_step is not None


def test_row_capacity_caps_every_row(make_config) -> None:
    method, datamodule = build(make_config, *L1_ROWS, "method.capacity=row", "method.target_density=0.1")
    train(method, batches(datamodule, 100))
    for name, constraint in method.sets.items():
        rows = (method.matrix(name).detach() != 0).sum(dim=1)
        assert int(rows.max()) <= constraint.support_budget == max(1, int(0.1 * constraint.cols))


def test_checkpoint_keeps_the_density_curve_and_counters(make_config) -> None:
    method, _ = build(make_config)
    method.density_curve = [{"epoch": 1, "val_accuracy": 0.5, "density": 0.01}]
    method.max_well_posedness, method.steps_checked = 0.4, 7
    method.atoms, method.frozen_steps, method.first_frozen_step = {"added": 3, "removed": 1, "max_row_growth": 1}, 2, 5
    checkpoint: dict = {}
    method.on_save_checkpoint(checkpoint)
    fresh, _ = build(make_config)
    fresh.on_load_checkpoint(checkpoint)
    assert (fresh.density_curve, fresh.max_well_posedness, fresh.steps_checked) == (method.density_curve, 0.4, 7)
    assert (fresh.atoms, fresh.frozen_steps, fresh.first_frozen_step) == (method.atoms, 2, 5)


# ---------------------------------------------------------------------------------------- full runs
def logged_metric(run_dir: Path, name: str) -> list[float]:
    """The values a run's CSV log holds for ``name`` (one per epoch for epoch-level metrics)."""
    with next((run_dir / "csv").glob("version_*/metrics.csv")).open() as handle:
        return [float(row[name]) for row in csv.DictReader(handle) if row.get(name)]


def test_tiny_run_writes_results_with_densities_gap_and_fixed_point(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=implicit_fw", *SMALL, "method.target_density=0.05", "trainer.max_epochs=2")
    run(cfg)
    results = read_results(tmp_path / "run")
    validate_results(results)
    assert results["status"] == "completed" and results["method"] == "implicit_fw"
    # The deployed form drops states the output never reads, so its density may be below the trained model's.
    assert 0 < results["density"] <= 0.05 and results["target_density"] == 0.05
    assert {name.split(".")[0] for name in results["per_layer_density"]} >= {"drive0", "readout"}
    assert results["dense_params"] == 24 * 24 + 24 * 65 + 10 * 24 + 10 * 65, "the dense implicit model of n = 24"
    assert results["test_accuracy"] > 0.3
    metrics = results["method_metrics"]
    assert metrics["well_posedness"]["well_posed_every_step"]
    assert metrics["well_posedness"]["max_A_inf_norm_over_training"] <= 0.5 + 1e-6
    assert metrics["well_posedness"]["steps_checked"] == 2 * 21
    assert metrics["fixed_point"]["training_forward"]["converged"]
    assert metrics["fixed_point"]["training_backward"]["samples"] > 0
    assert metrics["fw_gap"] is not None and set(metrics["fw_gap_per_matrix"]) == {"A", "B", "C", "D"}
    assert all(c["feasible"] for c in metrics["constraints"].values())
    assert metrics["atoms"]["max_row_growth"] <= 5 and metrics["capacity"] == "model"
    curve = metrics["density_curve"]
    assert [point["epoch"] for point in curve] == [1, 2]
    assert all(0 < point["density"] <= 0.05 for point in curve)
    assert len(logged_metric(tmp_path / "run", "train/density")) == 2
    assert len(logged_metric(tmp_path / "run", "train/fw_gap")) == 2
    # Latency of the deployed form at batch 1 and 64 (evaluation.latency.large_batch_size).
    assert set(results["latency_by_batch"]) == {"1", "64"}
    assert results["latency_by_batch"]["1"]["ms"] == results["latency_ms"]
    # The export is the deployed form, and it computes the trained model's logits.
    deployed = metrics["deployed"]
    assert deployed["fixed_point"]["converged"] and deployed["fixed_point"]["forwards"] > 0
    assert deployed["structure"]["kept_states"] <= 24
    exported = load_exported(tmp_path / "run")
    assert isinstance(exported, DeployedImplicitModel)
    trained = build_model(cfg.model, instantiate_node(cfg.dataset).info)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    trained.load_state_dict({key[len("model."):]: value for key, value in state.items() if key.startswith("model.")})
    x = torch.randn(16, *trained.input_shape)
    torch.testing.assert_close(exported(x), trained(x), rtol=1e-4, atol=1e-5)


def test_tiny_pgd_baseline_run_stays_well_posed_and_prunes_to_the_target(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=implicit_pgd", *SMALL, "method.target_density=0.2", "method.optimizer.lr=0.05")
    results = run(cfg)
    validate_results(results)
    assert results["density"] == pytest.approx(0.2, abs=1e-3)
    metrics = results["method_metrics"]
    assert metrics["well_posedness"]["max_A_inf_norm_over_training"] <= 0.5 + 1e-6
    assert metrics["projections"] == metrics["well_posedness"]["steps_checked"] > 0
    assert len(metrics["density_curve"]) == 1


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("method.constraints.A.kind=ksparse",), "method.constraints.A.kind"),
        (("method.constraints.A.radius=0.7",), "method.constraints.A.radius"),
        (("method.constraints.B.kind=l2",), "method.constraints.B.kind"),
        (("method.constraints.B.radius=-1",), "method.constraints.B.radius"),
        (("method.constraints.B.k=null",), "method.constraints.B.k"),
        (("+method.constraints.E={kind: l1}",), "method.constraints"),
        (("method.seed.matrix=C",), "method.seed.matrix"),
        (("method.seed.scale=2",), "method.seed.scale"),
        (("method.capacity=layer",), "method.capacity"),
        (("method.target_density=1.5",), "method.target_density"),
        (("method.optimizer.direction=pairwise",), "method.optimizer.direction"),
        (("method.optimizer.step_rule=armijo",), "method.optimizer.step_rule"),
        (("method.optimizer._target_=torch.optim.SGD",), "method.optimizer"),
        (("method.optimizer.step_offset=-1",), "method.optimizer.step_offset"),
    ],
)
def test_config_errors_are_raised_by_the_constructor(make_config, overrides, field: str) -> None:
    cfg = make_config("method=implicit_fw", *SMALL, *overrides)
    info = instantiate_node(cfg.dataset).info
    with pytest.raises(ConfigError) as caught:
        build_method(cfg.method, build_model(cfg.model, info), info)
    assert caught.value.field == field


@pytest.mark.parametrize("method", ["implicit_fw", "implicit_pgd"])
def test_the_methods_need_the_implicit_model(make_config, method: str) -> None:
    cfg = make_config(f"method={method}", "model=mlp")
    info = instantiate_node(cfg.dataset).info
    with pytest.raises(ConfigError, match="model=implicit") as caught:
        build_method(cfg.method, build_model(cfg.model, info), info)
    assert caught.value.field == "model"
