"""method=l0 and method=l0_penalty: config checks, the training step, the dual step, results, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import consparse.train
from consparse.compress.count import density
from consparse.config import instantiate_node
from consparse.errors import ConfigError
from consparse.gates import (
    GatedLayer,
    deterministic_gate_densities,
    expected_layer_densities,
    expected_model_density,
    gated_layers,
)
from consparse.gates.kept import KeptWeights
from consparse.methods import build_method
from consparse.methods.base import SparseMethod
from consparse.methods.l0 import L0Method
from consparse.models import build_model
from consparse.run_dir import CHECKPOINT_DIR, LAST_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]


def _method(make_config, *overrides: str):
    cfg = make_config(*overrides)
    info = instantiate_node(cfg.dataset).info
    torch.manual_seed(0)
    return build_method(cfg.method, build_model(cfg.model, info), info)


def _batch(method, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(size, *method.info.input_shape, generator=generator), torch.randint(0, 10, (size,), generator=generator)


# ----------------------------------------------------------------------------- configuration
def test_defaults_gate_the_mlp_with_a_model_wise_target(make_config) -> None:
    method = _method(make_config, "method=l0")
    assert isinstance(method, L0Method)
    assert method.gated_names == ["layers.1", "layers.3", "layers.5"]
    assert method.target_density == 0.5 and not method.layerwise
    assert method.multipliers.values.tolist() == [0.0]


def test_a_list_of_targets_is_layer_wise(make_config) -> None:
    method = _method(make_config, "method=l0", "method.target_density=[0.3,0.4,0.9]")
    assert method.layerwise and method.target_density == [0.3, 0.4, 0.9]
    assert method.multipliers.values.numel() == 3
    assert method.constrained_densities().shape == (3,)


def test_a_wrong_length_target_list_names_the_number_of_gated_layers(make_config) -> None:
    with pytest.raises(ConfigError, match="method.target_density: got 2 values but there are 3 gated layers"):
        _method(make_config, "method=l0", "method.target_density=[0.3,0.4]")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (("method=l0", "method.target_density=null"), "method.target_density"),
        (("method=l0", "method.target_density=1.5"), "method.target_density"),
        (("method=l0", "method.target_density=[0.3,0.0,0.5]"), "method.target_density"),
        (("method=l0", "method.dual_lr=0"), "method.dual_lr"),
        (("method=l0", "method.density_measure=weights"), "method.density_measure"),
        (("method=l0", "method.dual_defect=sampled"), "method.dual_defect"),
        (("method=l0", "method.relative_constraint=maybe"), "method.relative_constraint"),
        (("method=l0", "method.target_margin=1"), "method.target_margin"),
        (("method=l0", "method.target_margin=-0.1"), "method.target_margin"),
        (("method=l0", "method.gates_lr=-1"), "method.gates_lr"),
        (("method=l0", "method.sparsity=rows"), "method.sparsity"),
        (("method=l0", "method.optimizer.weight_decay=0.1"), "method.optimizer.weight_decay"),
        (("method=l0", "method.gated_layers=[conv*]"), "method.gated_layers"),
        (("method=l0_penalty", "method.target_density=0.5"), "method.target_density"),
        (("method=l0_penalty", "method.penalty=-1"), "method.penalty"),
        (("method=l0_penalty", "method.penalty=[0.1]"), "method.penalty"),
    ],
)
def test_bad_values_are_config_errors(make_config, overrides: tuple[str, ...], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _method(make_config, *overrides)


# ----------------------------------------------------------------------------- optimisation
def test_two_learning_rates_and_every_parameter_once(make_config) -> None:
    method = _method(make_config, "method=l0", "method.gates_lr=0.123", "method.optimizer.lr=0.01", "method.scheduler=null")
    optimizer = method.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    weights, gates = optimizer.param_groups
    assert (weights["name"], weights["lr"], gates["name"], gates["lr"]) == ("weights", 0.01, "gates", 0.123)
    ids = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in method.model.parameters())
    assert {id(layer.gate.log_alpha) for _, layer in gated_layers(method.model)} == {id(p) for p in gates["params"]}


def test_penalised_method_differs_from_the_constrained_one_only_in_the_coefficient(make_config) -> None:
    constrained = _method(make_config, "method=l0", "method.target_density=0.3", "method.density_measure=gates",
                          "method.relative_constraint=false", "method.target_margin=0")
    penalised = _method(make_config, "method=l0_penalty", "method.penalty=0.7")
    penalised.model.load_state_dict(constrained.model.state_dict())
    constrained.multipliers.values.fill_(0.7)
    x, y = _batch(constrained)
    losses = {}
    for name, method in (("l0", constrained), ("penalty", penalised)):
        method.log = lambda *args, **kwargs: None
        torch.manual_seed(5)  # the same gate samples
        losses[name] = method.training_step((x, y), 0)
        losses[name].backward()
    # lambda * (rho - target) versus penalty * rho: the losses differ by the constant 0.7 * 0.3 ...
    assert float((losses["penalty"] - losses["l0"]).detach()) == pytest.approx(0.7 * 0.3, abs=1e-5)
    # ... and every gradient is the same.
    for (name, p), (_, q) in zip(constrained.model.named_parameters(), penalised.model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_penalty_list_penalises_each_layer(make_config) -> None:
    method = _method(make_config, "method=l0_penalty", "method.penalty=[1.0,0.0,2.0]")
    rho = expected_layer_densities(method.model)
    torch.testing.assert_close(method.density_term(method.constrained_densities()), rho[0] + 2 * rho[2])


def _fit(method, steps: int, **trainer_kwargs) -> pl.Trainer:
    x, y = _batch(method, size=8 * steps)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(method, train_dataloaders=loader)
    return trainer


def test_dual_step_uses_the_defect_before_the_primal_step_and_gates_are_clamped(make_config) -> None:
    method = _method(make_config, "method=l0", "method.target_density=0.1", "method.dual_lr=0.5",
                     "method.gates_lr=50", "method.density_measure=gates", "method.dual_defect=expected",
                     "method.relative_constraint=false", "method.target_margin=0")
    before = float(expected_model_density(method.model))
    _fit(method, steps=1)
    assert float(method.multipliers.values) == pytest.approx(0.5 * (before - 0.1), rel=1e-5)
    for _, layer in gated_layers(method.model):
        assert float(layer.gate.log_alpha.abs().max()) <= 4.6052  # a huge step, clamped


@pytest.mark.parametrize("margin", [0.0, 0.2])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("dual_defect", ["deployed", "expected"])
def test_kept_weights_constraint_ascends_on_the_purged_models_density(make_config, dual_defect: str,
                                                                      relative: bool, margin: float) -> None:
    method = _method(make_config, "method=l0", "method.target_density=0.1", "method.dual_lr=0.5",
                     f"method.dual_defect={dual_defect}", f"method.relative_constraint={relative}",
                     f"method.target_margin={margin}", "method.trim_to_target=false")
    kept = KeptWeights(method.model, method.info.input_shape)
    with torch.no_grad():
        expected = float(kept.model_density())
        deployed = float(kept.model_density(deployed=True))
        torch.testing.assert_close(method.constrained_densities(), kept.model_density().unsqueeze(0))
    # The primal term's gradient is the expectation's, whatever the dual step measures.
    method.density_term(method.constrained_densities()).backward()
    measured = deployed if dual_defect == "deployed" else expected
    method.after_optimizer_step()
    aim = 0.1 * (1 - margin)  # the margin lowers the level held, not the target reported
    defect = measured / aim - 1 if relative else measured - aim
    assert float(method.multipliers.values) == pytest.approx(0.5 * defect, rel=1e-5)
    assert method.target_density == 0.1
    # The purged model measures what the deployed count says.
    deployment = method.finalize(None)
    assert density(deployment.model, deployment.reference) == pytest.approx(deployed, abs=1e-6)
    metrics = method.method_metrics()
    assert (metrics["density_measure"], metrics["dual_defect"]) == ("kept_weights", dual_defect)
    assert metrics["target_margin"] == margin
    assert metrics["expected_kept_density"]["model"] == pytest.approx(expected, rel=1e-5)


def test_layer_wise_kept_weights_targets_each_layers_kept_share(make_config) -> None:
    method = _method(make_config, "method=l0", "method.target_density=[0.3,0.4,0.9]")
    kept = KeptWeights(method.model, method.info.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(method.constrained_densities(), kept.layer_densities(method.gated_names))
        torch.testing.assert_close(method.deployed_densities(), kept.layer_densities(method.gated_names, deployed=True))


def test_gate_share_measure_keeps_the_papers_constraint(make_config) -> None:
    method = _method(make_config, "method=l0", "method.target_density=[0.3,0.4,0.9]", "method.density_measure=gates")
    with torch.no_grad():
        torch.testing.assert_close(method.constrained_densities(), expected_layer_densities(method.model))
        shares = deterministic_gate_densities(method.model)
        assert method.deployed_densities().tolist() == pytest.approx([shares[n] for n in method.gated_names])
    assert method.method_metrics()["density_measure"] == "gates"


def test_constraint_pressure_lowers_the_expected_density(make_config) -> None:
    method = _method(make_config, "method=l0", "method.target_density=0.2", "method.dual_lr=1.0",
                     "method.gates_lr=0.05")
    before = float(expected_model_density(method.model))
    _fit(method, steps=20)
    assert float(expected_model_density(method.model)) < before - 0.1


def test_restarts_zero_the_multiplier_once_the_target_is_met(make_config) -> None:
    # Expected kept weights: every test gate starts open, so the deployed model starts dense.
    method = _method(make_config, "method=l0", "method.target_density=0.99", "method.dual_lr=0.5",
                     "method.dual_defect=expected")
    method.multipliers.values.fill_(3.0)
    _fit(method, steps=1)
    assert float(method.multipliers.values) == 0.0


def test_gate_learning_rate_is_not_scheduled_unless_asked(make_config) -> None:
    for schedule_gates, expected in ((False, 0.02), (True, 0.002)):
        method = _method(make_config, "method=l0", "scheduler@method.scheduler=multistep",
                         "method.scheduler.milestones=[1]", "method.scheduler.gamma=0.1",
                         "method.scheduler_interval=step", "method.gates_lr=0.02", "method.optimizer.lr=0.01",
                         f"method.schedule_gates={schedule_gates}")
        trainer = _fit(method, steps=2)
        weights, gates = trainer.optimizers[0].param_groups
        assert weights["lr"] == pytest.approx(0.001)
        assert gates["lr"] == pytest.approx(expected)


# ----------------------------------------------------------------------------- the platform path
def test_end_to_end_on_digits_purges_and_reports(make_config, tmp_path) -> None:
    cfg = make_config("method=l0", "trainer.max_epochs=2", "evaluation.compression_grid={unstructured:[0.5]}")
    results = consparse.train.run(cfg)
    assert results["status"] == "completed" and results["method"] == "l0"
    metrics = results["method_metrics"]
    assert set(metrics["expected_density"]["layers"]) == {"layers.1", "layers.3", "layers.5"}
    assert 0 < metrics["expected_density"]["model"] < 1 and len(metrics["multipliers"]) == 1
    assert metrics["dual_lr"] == pytest.approx(3e-5)  # conf/method/l0.yaml, whatever the run's length
    assert results["params_total"] < results["dense_params"]  # the purged model is smaller
    assert results["density"] < 1.0 and results["target_density"] == 0.5
    assert set(results["per_layer_density"]) == {"layers.1.weight", "layers.3.weight", "layers.5.weight"}
    assert results["test_accuracy"] > 0.5
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / results["export"]).exists()
    checkpoint = torch.load(run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=False)
    torch.testing.assert_close(checkpoint["state_dict"]["multipliers.values"], torch.tensor(metrics["multipliers"]))


def test_penalised_run_reports_no_target(make_config) -> None:
    results = consparse.train.run(make_config("method=l0_penalty", "method.penalty=[0.1,0.1,0.1]"))
    assert results["status"] == "completed" and results["target_density"] is None
    assert results["method_metrics"]["penalty"] == pytest.approx([0.1, 0.1, 0.1])
    assert results["method_metrics"]["constraint"] == "layer"


def test_finalize_returns_a_plain_model_equal_to_the_gated_one(make_config) -> None:
    method = _method(make_config, "method=l0", "model=lenet5", "dataset.image_size=28",
                     "method.target_density=[0.5,0.3,0.7,0.1]")
    with torch.no_grad():
        for _, layer in gated_layers(method.model):
            layer.gate.log_alpha.uniform_(-3, 3)
    deployment = method.finalize(None)
    deployed = deployment.model
    assert not any(isinstance(m, GatedLayer) for m in deployed.modules())
    x, _ = _batch(method, size=4)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), method.model.eval()(x), atol=1e-5, rtol=0)
    for dense in (deployment.reference, deployment.compression_base):
        assert not any(isinstance(m, GatedLayer) for m in dense.modules())
    assert deployment.compression_base is not deployment.reference  # the curve prunes a copy of its own
    assert deployment.metrics()["constraint"] == "layer"


# ----------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from conftest import compose_config
    import consparse.train
    from consparse.methods.l0 import L0Method

    out = Path(sys.argv[2])
    original = L0Method.finalize

    def finalize(self, datamodule):
        log_alpha = [float(p.sum()) for p in self.parameter_groups()[1]["params"]]
        record = {"multipliers": self.multipliers.values.tolist(), "log_alpha": log_alpha,
                  "steps": self.trainer.global_step}
        (out / f"rank{self.trainer.global_rank}.json").write_text(json.dumps(record))
        return original(self, datamodule)

    L0Method.finalize = finalize
    cfg = compose_config(["method=l0", "method.target_density=[0.2,0.3,0.4]", "method.dual_lr=0.05",
                          "hardware=cpu_ddp", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                          "evaluation.compression_grid=null", "evaluation.latency.min_run_time=0.02"], out / "run")
    consparse.train.run(cfg)
    """
)


@pytest.mark.ddp
@pytest.mark.slow
def test_multipliers_stay_equal_across_ddp_ranks(tmp_path) -> None:
    script = tmp_path / "l0_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, str(script), str(REPO / "tests"), str(tmp_path)], check=False, env=env,
                               capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    assert ranks[0]["multipliers"] == ranks[1]["multipliers"]
    assert any(value > 0 for value in ranks[0]["multipliers"])
    assert ranks[0]["log_alpha"] == ranks[1]["log_alpha"]
    assert (tmp_path / "run" / "results.json").exists()


# ----------------------------------------------------------------------------- experiment presets
MNIST_PRESETS = ["l0_mnist_mlp_model", "l0_mnist_mlp_layer", "l0_mnist_lenet_model", "l0_mnist_lenet_layer",
                 "l0_control_mnist_mlp", "l0_penalty_control_mnist_mlp"]
GPU_PRESETS = ["l0_cifar10_wrn28_10", "l0_cifar100_wrn28_10", "l0_tinyimagenet_resnet18", "l0_imagenet_resnet50"]


def _preset_step(make_config, preset: str) -> SparseMethod:
    """Compose the preset, build its method on its model and take one optimiser step on a random batch of 2."""
    method = _method(make_config, f"experiment={preset}")
    method.log = lambda *args, **kwargs: None
    optimizer = method.optimizer_factory(method.parameter_groups())
    x, y = torch.randn(2, *method.info.input_shape), torch.randint(0, method.info.num_classes, (2,))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = method.training_step((x, y), 0)
        loss.backward()
        return loss

    method.optimizer_step(0, 0, optimizer, closure)
    return method


@pytest.mark.parametrize("preset", MNIST_PRESETS)
def test_mnist_presets_compose_and_take_a_step(make_config, preset: str) -> None:
    method = _preset_step(make_config, preset)
    assert method.info.input_shape == (1, 28, 28)


@pytest.mark.slow
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_presets_compose_and_take_a_step(make_config, preset: str) -> None:
    method = _preset_step(make_config, preset)
    expected_layers = {"l0_cifar10_wrn28_10": 12, "l0_cifar100_wrn28_10": 12, "l0_tinyimagenet_resnet18": 16,
                       "l0_imagenet_resnet50": 48}[preset]
    assert len(method.gated_names) == expected_layers
    assert isinstance(method.optimizer_factory.func, type) and method.optimizer_factory.func is torch.optim.SGD
