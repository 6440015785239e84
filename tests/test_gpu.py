"""CUDA checks (``pytest -m gpu``; skipped without a CUDA device; ``make gpu-check`` runs them).

Every method trains an epoch with ``hardware=gpu`` (bf16-mixed, channels_last, cuDNN autotuning); the
full-precision islands hold under CUDA's autocast; channels_last reaches the convolutions; and the
training steps of dense, magnitude, sfw and l0 make no synchronising CUDA call
(``torch.cuda.set_sync_debug_mode("error")`` from the second batch on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from consparse.accelerate import HardwareSettings, prepare_model
from consparse.config import instantiate_node
from consparse.gates import expected_model_density, gate_model
from consparse.implicit.function import SolveRecord, equilibrium
from consparse.implicit.solvers import FixedPointSettings
from consparse.lasso.path import solve_lasso
from consparse.lasso.problem import LassoProblem
from consparse.methods import build_method
from consparse.models import build_model
from consparse.optim.constraints import KSupportNormBall, SpectralKSupportNormBall
from consparse.train import run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
TINY_IMAGES = ("dataset=synthetic", "dataset.input_shape=[3,16,16]", "dataset.train_size=256", "dataset.test_size=128",
               "dataset.batch_size=64", "evaluation.compression_grid.unstructured=[0.0,0.5]",
               "evaluation.compression_grid.filter=[]", "evaluation.compression_grid.lowrank=[]")
RUNS = {
    "dense": ("method=dense", "model=resnet20", *TINY_IMAGES),
    "magnitude": ("method=magnitude", "model=resnet20", "method.finetune_epochs=1", "trainer.max_epochs=2", *TINY_IMAGES),
    "sfw": ("method=sfw", "model=resnet20", *TINY_IMAGES),
    "sfw_spectral": ("method=sfw", "model=lenet5", "method.constraint.kind=spectral_ksupport", *TINY_IMAGES),
    "l0": ("method=l0", "model=resnet20", *TINY_IMAGES),
    "l0_penalty": ("method=l0_penalty", "model=lenet5", *TINY_IMAGES),
    "implicit_fw": ("method=implicit_fw", "model=implicit", "model.state_size=32", *TINY_IMAGES),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_every_method_trains_an_epoch_with_the_gpu_preset(make_config, tmp_path: Path, name: str) -> None:
    results = run(make_config("hardware=gpu", *RUNS[name]))
    assert results["status"] == "completed"
    assert results["hardware"]["precision"] == "bf16-mixed" and results["hardware"]["channels_last"] is True
    assert 0.0 <= results["test_accuracy"] <= 1.0 and 0.0 < results["density"] <= 1.0


def test_lmos_are_float32_and_match_under_cuda_autocast() -> None:
    generator = torch.Generator(device=CUDA).manual_seed(0)
    grad = torch.randn(64, 48, device=CUDA, generator=generator)
    for make in (lambda: KSupportNormBall((64, 48), 2.0, k=0.1),
                 lambda: SpectralKSupportNormBall((64, 48), 2.0, k=4, svd_iterations=3)):
        expected = make().lmo(grad)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = make().lmo(grad)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_fixed_point_adjoint_lasso_and_gates_are_float32_under_cuda_autocast() -> None:
    generator = torch.Generator(device=CUDA).manual_seed(0)
    A = torch.randn(40, 40, device=CUDA, generator=generator)
    A = (0.9 * A / A.abs().sum(dim=1, keepdim=True)).requires_grad_()
    B = torch.randn(40, 12, device=CUDA, generator=generator).requires_grad_()
    U = torch.randn(16, 12, device=CUDA, generator=generator)
    settings = FixedPointSettings(max_iter=500, rtol=1e-6)
    plain = equilibrium(A, B, U, settings, settings, SolveRecord())
    (plain_grad,) = torch.autograd.grad(plain.sum(), A)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        states = equilibrium(A, B, U, settings, settings, SolveRecord())
    (grad,) = torch.autograd.grad(states.sum(), A)
    assert states.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(states, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-5, atol=1e-6)

    design = torch.randn(80, 24, device=CUDA, generator=generator)
    targets = torch.randn(8, 80, device=CUDA, generator=generator)
    problem = LassoProblem(design.T @ design, targets @ design, (targets * targets).sum(dim=1))
    lam = 0.2 * problem.lambda_max()
    expected, _ = solve_lasso(problem, lam)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        weights, _ = solve_lasso(problem, lam)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)

    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).to(CUDA)
    gate_model(net, structured=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        density = expected_model_density(net)
        net(torch.randn(4, 20, device=CUDA))
    assert density.dtype == net[0].gate.current.dtype == torch.float32


class _ChannelsLastProbe(pl.Callback):
    def __init__(self) -> None:
        self.seen = False

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        convs = [m for m in module.model.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(c.weight.is_cuda and c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
        self.seen = True


class _NoSyncInSteps(pl.Callback):
    """CUDA's sync debug mode at "error" from the second training batch to the end of the epoch."""

    def __init__(self) -> None:
        self.guarded_batches = 0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx >= 1:
            torch.cuda.set_sync_debug_mode("error")
            self.guarded_batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        torch.cuda.set_sync_debug_mode("default")


class _DeviceBatches:
    """Batches already on the GPU (no loader, so no copies or pinned-memory syncs in the steps)."""

    def __init__(self, shape: tuple[int, ...], classes: int, batches: int, batch_size: int) -> None:
        generator = torch.Generator(device=CUDA).manual_seed(0)
        self.batches = [(torch.randn(batch_size, *shape, device=CUDA, generator=generator),
                         torch.randint(0, classes, (batch_size,), device=CUDA, generator=generator))
                        for _ in range(batches)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("name", ["dense", "magnitude", "sfw", "l0"])
def test_channels_last_reaches_the_convs_and_steps_do_not_synchronise(make_config, name: str) -> None:
    cfg = make_config("hardware=gpu", *RUNS[name])
    datamodule = instantiate_node(cfg.dataset)
    method = build_method(cfg.method, build_model(cfg.model, datamodule.info), datamodule.info)
    prepare_model(method.model, HardwareSettings.from_config(cfg.hardware))
    probe, guard = _ChannelsLastProbe(), _NoSyncInSteps()
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", benchmark=True,
                         max_epochs=cfg.trainer.max_epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[probe, guard])
    try:
        trainer.fit(method, train_dataloaders=_DeviceBatches(datamodule.info.input_shape, datamodule.info.num_classes, 5, 32))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert probe.seen and guard.guarded_batches >= 4
