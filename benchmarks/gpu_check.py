"""The GPU check: one short run that measures the platform on one GPU and runs the CUDA-marked tests.

On synthetic data of CIFAR's shape (50,000 uint8 images 3x32x32, 10 classes, held on the device and
augmented there in batches: random crop with 4 pixels of padding and a horizontal flip), ResNet-18,
batch 512, with the ``hardware=gpu`` settings (bf16 mixed precision, channels_last, cuDNN autotuning):

* a bare PyTorch loop: the same model, data pipeline, optimiser node (method=dense's SGD) and
  autocast, no Lightning;
* the platform for ``dense``, ``sfw`` (k-support), ``l0`` and ``magnitude`` (its fine-tuning epochs,
  masks re-applied after every step): model and method built from the config as ``train.py`` builds
  them, Lightning's Trainer as ``consparse.train`` builds it (per-epoch checkpoint, CSV log);

each after one warm-up epoch (cuDNN autotuning, allocator), over ``--epochs`` timed epochs; printed
as seconds per epoch, images/s, the ratio to the bare loop and to dense, and the model FLOP/s
(``torch.utils.flop_counter`` on one forward, times 3 for forward and backward) as a fraction of
the GPU's dense bf16 peak. Then: WRN-28-10 (the L0 paper's CIFAR model) steps at batch 128 for
dense and for the L0 preset ``experiment=l0_cifar10_wrn28_10``, extrapolated to an epoch and to
200 epochs; the implicit_lasso row solver's rows/s on the GPU against one CPU thread;
2:4 semi-structured sparse Linear stacks against dense at batch 256 (``benchmarks/nm_latency.py``);
``pytest -m gpu``; and, if ``--budget`` leaves time, ``dense`` with ``hardware.compile=true`` (its
compilation reported beside the timed epochs).
Everything goes into ``<out>/gpu_check.json``, rewritten after every item, so a failure or a
timeout keeps what was measured (a failing item records its error and the check goes on).

Without a GPU the same code runs at a tiny size on the CPU (fp32), which is how CI keeps it working:

    python3 benchmarks/gpu_check.py --out outputs/gpu_check          # make gpu-check
    python3 benchmarks/gpu_check.py --out /tmp/check --tiny --skip-tests
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The check belongs to this checkout: its own sources, whatever consparse an environment may hold.
sys.path.insert(0, str(REPO / "src"))
# Its sibling benchmarks (data_loader) import as modules, also when this file is loaded by path.
sys.path.insert(0, str(REPO / "benchmarks"))

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from data_loader import measure_loader  # benchmarks/data_loader.py, beside this script
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from nm_latency import GOAL_SPEEDUP as NM_GOAL_SPEEDUP  # benchmarks/nm_latency.py, beside this script
from nm_latency import STACKS as NM_STACKS
from nm_latency import TINY_STACKS as NM_TINY_STACKS
from nm_latency import measure as measure_nm
from torch.utils.flop_counter import FlopCounterMode

from consparse.accelerate import HardwareSettings, prepare_model, release_model
from consparse.callbacks import TrainTimer
from consparse.data.cifar import CROP_PADDING, CIFAR10DataModule
from consparse.data.device_batches import DeviceBatches, EpochSampler, ImageTensors
from consparse.data.info import DatasetInfo
from consparse.lasso.problem import LassoProblem
from consparse.methods import build_method
from consparse.methods.implicit_lasso.refit import RowBlock, RowSolver
from consparse.models import build_model
from consparse.quiet import silence_known_noise
from consparse.train import _build_trainer

CONF = REPO / "conf"
# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, by a fragment of torch.cuda.get_device_name().
BF16_PEAKS = {
    "H200": (989.4e12, "NVIDIA H100/H200 SXM: 989 TFLOP/s dense BF16 (no structured sparsity)"),
    "H100": (989.4e12, "NVIDIA H100/H200 SXM: 989 TFLOP/s dense BF16 (no structured sparsity)"),
    "A100": (312e12, "NVIDIA A100: 312 TFLOP/s dense BF16"),
}
# Methods of the ResNet-18 table: overrides beyond method=<name>.
METHODS: dict[str, tuple[str, ...]] = {
    "dense": (),
    "sfw": ("method.constraint.kind=ksupport",),
    "l0": (),
    "magnitude": (),  # timed over its fine-tuning epochs (masks applied after every step)
}
GOALS = {
    "dense_epoch_seconds": 2.0,
    "platform_over_bare": 1.10,
    "sfw_over_dense_step": 1.15,
    "l0_over_dense_step": 1.20,
}
PAPER_EPOCHS = 200
# The data pipeline must deliver at least this many times the images/s the model consumes.
LOADER_GOAL = 5.0
# Seconds the optional compiled-dense row needs (compilation of ResNet-18 forward and backward plus
# three epochs); it runs only when the budget leaves this much after the tests.
COMPILE_RESERVE_SECONDS = 120.0
TESTS_MIN_SECONDS = 30.0


@dataclass(frozen=True)
class Sizes:
    images: int = 50_000
    side: int = 32
    classes: int = 10
    batch: int = 512
    warmup_epochs: int = 1
    epochs: int = 2
    model: str = "resnet18"
    wrn_batch: int = 128
    wrn_warmup_steps: int = 3
    wrn_steps: int = 12
    wrn_overrides: tuple[str, ...] = ()
    lasso_samples: int = 4000
    lasso_features: int = 1185  # the MNIST-mlp implicit problem's d (400 states + 785 inputs)
    lasso_rows: int = 8192
    lasso_row_batch: int = 2048
    lasso_cpu_rows: int = 256


# The CPU size: the same code in seconds (ResNet-20 for ResNet-18, a WRN-28-1 for the WRN-28-10).
TINY = Sizes(images=64, side=8, batch=32, epochs=1, model="resnet20", wrn_batch=4, wrn_warmup_steps=1, wrn_steps=2,
             wrn_overrides=("model.widen_factor=1",), lasso_samples=200, lasso_features=40, lasso_rows=64,
             lasso_row_batch=32, lasso_cpu_rows=32)


# ---------------------------------------------------------------------------------------------- data
def device_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   limit_batches: int | None = None) -> DeviceBatches:
    """The platform's on-device CIFAR pipeline (``dataset.on_device``): random crop with 4 pixels of
    padding, horizontal flip and normalisation as batched tensor operations on the images' device."""
    if limit_batches is not None:
        images, labels = images[:batch_size * limit_batches], labels[:batch_size * limit_batches]
    tensors = ImageTensors(images, labels, CIFAR10DataModule.mean, CIFAR10DataModule.std, padding=CROP_PADDING,
                           flip=True)
    sampler = EpochSampler(labels.shape[0], padding=CROP_PADDING, flip=True)
    return DeviceBatches(tensors, batch_size, images.device, sampler)


def synthetic_images(sizes: Sizes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (sizes.images, 3, sizes.side, sizes.side), dtype=torch.uint8, device=device,
                           generator=generator)
    labels = torch.randint(0, sizes.classes, (sizes.images,), device=device, generator=generator)
    return images, labels


# ---------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock(pl.Callback):
    """Wall time from the start of epoch ``warmup_epochs`` (or batch ``warmup_steps`` of the first
    epoch) to the end of training (or the end of the last batch), synchronised with the device."""

    def __init__(self, device: torch.device, warmup_epochs: int = 0, warmup_steps: int | None = None) -> None:
        self.device, self.warmup_epochs, self.warmup_steps = device, warmup_epochs, warmup_steps
        self.started: float | None = None
        self.seconds: float | None = None
        self.steps = 0

    def _stamp(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.warmup_steps is None and trainer.current_epoch == self.warmup_epochs:
            self.started = self._stamp()

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.warmup_steps is not None and batch_idx == self.warmup_steps:
            self.started = self._stamp()
        if self.started is not None:
            self.steps += 1

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.warmup_steps is not None and self.started is not None:
            self.seconds = self._stamp() - self.started

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.warmup_steps is None and self.started is not None:
            self.seconds = self._stamp() - self.started


def compose_config(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def platform_seconds(overrides: list[str], info: DatasetInfo, loader: DeviceBatches, device: torch.device,
                     clock: Clock, epochs: int, run_root: Path) -> dict[str, Any]:
    """Train with the platform's pieces; returns the clock's seconds and what was built."""
    run_dir = Path(tempfile.mkdtemp(dir=run_root))
    cfg = compose_config([*overrides, f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
                          f"paths.output_dir={run_dir}"])
    pl.seed_everything(cfg.seed, verbose=False)
    model = build_model(cfg.model, info)
    method = build_method(cfg.method, model, info)
    prepare_model(method.model, HardwareSettings.from_config(cfg.hardware))
    trainer = _build_trainer(cfg, run_dir, TrainTimer())
    trainer.callbacks.append(clock)
    trainer.fit(method, train_dataloaders=loader)
    release_model(method.model)
    if clock.seconds is None:
        raise RuntimeError("the timed part of the run never started (too few epochs or batches)")
    return {"seconds": clock.seconds, "steps": clock.steps, "precision": str(trainer.precision)}


def bare_seconds(overrides: list[str], info: DatasetInfo, loader: DeviceBatches, device: torch.device,
                 sizes: Sizes) -> dict[str, Any]:
    """The same model, optimiser node, data and autocast in a plain loop."""
    cfg = compose_config(overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, info)
    prepare_model(model, HardwareSettings.from_config(cfg.hardware))
    model.to(device).train()
    optimizer = instantiate(cfg.method.optimizer)(model.parameters())
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark") or False)
    started, steps = None, 0
    for epoch in range(sizes.warmup_epochs + sizes.epochs):
        if epoch == sizes.warmup_epochs:
            synchronize(device)
            started = time.perf_counter()
        for x, y in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += started is not None
    synchronize(device)
    assert started is not None
    return {"seconds": time.perf_counter() - started, "steps": steps, "precision": "bf16-mixed" if bf16 else "32-true"}


def forward_flops_per_image(model_overrides: list[str], info: DatasetInfo) -> float:
    cfg = compose_config(model_overrides)
    model = build_model(cfg.model, info).train()
    batch = torch.zeros(2, *info.input_shape)
    with FlopCounterMode(display=False) as counter:
        model(batch)
    return counter.get_total_flops() / batch.shape[0]


# ---------------------------------------------------------------------------------------------- LASSO
def lasso_problem(sizes: Sizes, rows: int, device: torch.device) -> tuple[LassoProblem, torch.Tensor]:
    """Rows of an implicit-model-like problem: non-negative (ReLU) states, sparse true rows, noise."""
    generator = torch.Generator(device=device).manual_seed(0)
    options = {"generator": generator, "dtype": torch.float64, "device": device}
    design = torch.relu(torch.randn(sizes.lasso_samples, sizes.lasso_features, **options))
    truth = torch.randn(rows, sizes.lasso_features, **options)
    truth = truth * (torch.rand(rows, sizes.lasso_features, **options) < 0.05)
    targets = truth @ design.T + 0.5 * torch.randn(rows, sizes.lasso_samples, **options)
    problem = LassoProblem(design.T @ design, targets @ design, (targets * targets).sum(dim=1))
    # A radius below the least-squares rows' norms, so the constraint binds as in implicit_lasso.
    return problem, (0.3 * truth.abs().sum(dim=1)).clamp_min(1e-3)


def lasso_rows_per_second(sizes: Sizes, rows: int, row_batch: int, device: torch.device) -> dict[str, Any]:
    problem, radius = lasso_problem(sizes, rows, device)
    solver = RowSolver([RowBlock("synthetic", problem)], row_batch)
    synchronize(device)
    started = time.perf_counter()
    solution = solver.solve([radius])[0]
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"rows": rows, "row_batch": row_batch, "seconds": seconds, "rows_per_second": rows / seconds,
            "rows_on_sphere": int(solution.on_sphere.sum()), "rows_fallback": int(solution.fallback.sum())}


# ---------------------------------------------------------------------------------------------- the check
class Report:
    """The JSON record, rewritten after every item."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path, self.record = path, record
        self.started = time.perf_counter()
        self.write()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write(self) -> None:
        self.record["elapsed_seconds"] = round(self.elapsed(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.record, indent=2, default=str) + "\n")
        temporary.replace(self.path)

    def item(self, section: str, name: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Run one measurement; its result or its error goes into ``record[section][name]``."""
        started = time.perf_counter()
        try:
            result = measure()
        except Exception as error:  # noqa: BLE001 - one failing item must not lose the others
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
            print(f"  {section}/{name}: FAILED {result['error']}", flush=True)
            self.record.setdefault(section, {})[name] = result
            self.write()
            return None
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        self.record.setdefault(section, {})[name] = result
        self.write()
        return result


def environment(device: torch.device) -> dict[str, Any]:
    record: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "device": str(device),
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        record["gpu_name"] = name
        record["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        peak = next((value for fragment, value in BF16_PEAKS.items() if fragment in name), None)
        record["bf16_peak_flops"], record["bf16_peak_assumption"] = peak if peak else (None, "unknown GPU: no fraction")
    else:
        record["bf16_peak_flops"], record["bf16_peak_assumption"] = None, "no GPU: no fraction of a peak"
    return record


def run_tests(timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "disabled"}
    # Only the files that mark tests gpu: an import error in an unrelated test file (a package the
    # GPU machine lacks) must not stop the collection.
    files = sorted(str(path) for path in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in path.read_text())
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", *(files or [str(REPO / "tests")])]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return {"command": " ".join(command[2:]), "timed_out": True, "timeout_seconds": timeout, "output_tail": output[-4000:]}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"command": " ".join(command[2:]), "returncode": done.returncode, "seconds": round(time.perf_counter() - started, 1),
            "summary": lines[-1] if lines else "", "output_tail": (done.stdout + done.stderr)[-4000:]}


def throughput(result: dict[str, Any] | None, batch: int, images: int, flops_per_image: float | None,
               peak: float | None) -> None:
    """Add per-epoch and per-image figures to a timed result (in place)."""
    if not result:
        return
    step = result["seconds"] / result["steps"]
    result["seconds_per_step"] = step
    result["seconds_per_epoch"] = step * math.ceil(images / batch)
    result["images_per_second"] = images / result["seconds_per_epoch"]
    if flops_per_image:
        result["model_flops_per_second"] = 3 * flops_per_image * result["images_per_second"]
        result["fraction_of_bf16_peak"] = result["model_flops_per_second"] / peak if peak else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check", help="folder for gpu_check.json")
    parser.add_argument("--tiny", action="store_true", help="the CPU size (the default without a GPU)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds for the whole check: the tests get what the measurements leave, "
                             "the optional compiled row runs only if enough is left after them")
    args = parser.parse_args()
    silence_known_noise()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    sizes = TINY if tiny else Sizes()
    hardware = "gpu" if device.type == "cuda" else "cpu"
    env = environment(device)
    peak = env["bf16_peak_flops"]
    report = Report(args.out / "gpu_check.json", {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mode": "gpu" if not tiny else "tiny (CPU-sized)",
        "environment": env,
        "sizes": asdict(sizes),
        "goals": dict(GOALS),
    })
    print(f"gpu_check: {env.get('gpu_name', device)}, torch {torch.__version__}, "
          f"{'full size' if not tiny else 'tiny size'}; writing {report.path}", flush=True)
    run_root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    info = DatasetInfo("synthetic", (3, sizes.side, sizes.side), sizes.classes, "image")
    images, labels = synthetic_images(sizes, device)
    loader = device_batches(images, labels, sizes.batch)
    base = [f"model={sizes.model}", "dataset=synthetic", f"dataset.batch_size={sizes.batch}", f"hardware={hardware}"]
    epochs = sizes.warmup_epochs + sizes.epochs

    flops = report.item("flops", sizes.model, lambda: {"forward_flops_per_image": forward_flops_per_image(base, info)})
    flops_per_image = flops["forward_flops_per_image"] if flops else None

    # --- ResNet-18: bare loop and the four methods
    table = sizes.model
    bare = report.item(table, "bare", lambda: bare_seconds(["method=dense", *base], info, loader, device, sizes))
    throughput(bare, sizes.batch, sizes.images, flops_per_image, peak)
    for name, extra in METHODS.items():
        overrides = [f"method={name}", *base, *extra]
        warmup, total = sizes.warmup_epochs, epochs
        if name == "magnitude":
            # Prune at the start of the epoch after the warm-up (its global ranking is one-off work at
            # that epoch's start), then time the fine-tuning epochs that follow, masks applied per step.
            warmup, total = sizes.warmup_epochs + 1, epochs + 1
            overrides.append(f"method.finetune_epochs={sizes.epochs + 1}")
        measured = report.item(table, name, lambda o=overrides, w=warmup, t=total: platform_seconds(
            o, info, loader, device, Clock(device, w), t, run_root))
        throughput(measured, sizes.batch, sizes.images, flops_per_image, peak)
    rows = report.record.get(table, {})
    dense = rows.get("dense", {})
    for name, row in rows.items():
        if "seconds_per_epoch" in row and "seconds_per_epoch" in rows.get("bare", {}):
            row["ratio_to_bare"] = row["seconds_per_epoch"] / rows["bare"]["seconds_per_epoch"]
        if "seconds_per_step" in row and "seconds_per_step" in dense:
            row["ratio_to_dense_step"] = row["seconds_per_step"] / dense["seconds_per_step"]
    report.write()

    # --- implicit_lasso's row solver: the device against one CPU thread
    def lasso() -> dict[str, Any]:
        result = {"device": lasso_rows_per_second(sizes, sizes.lasso_rows, sizes.lasso_row_batch, device)}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result["cpu_1_thread"] = lasso_rows_per_second(sizes, sizes.lasso_cpu_rows, sizes.lasso_cpu_rows,
                                                           torch.device("cpu"))
        finally:
            torch.set_num_threads(threads)
        result["speedup"] = result["device"]["rows_per_second"] / result["cpu_1_thread"]["rows_per_second"]
        result["features"], result["samples"] = sizes.lasso_features, sizes.lasso_samples
        return result

    report.item("implicit_lasso_rows", "active_set", lasso)

    # --- the data pipelines alone against what ResNet-18 consumes (goal on a GPU: the on-device one >= 5x)
    report.item("data_loader", "cifar", lambda: measure_loader(
        device=device, batch_size=sizes.batch, num_images=sizes.images,
        num_workers=0 if tiny else min(8, os.cpu_count() or 1), cpu_loader_batches=None if tiny else 40,
        model_steps=2 if tiny else 10))

    # --- 2:4 semi-structured Linear stacks against dense, batch 256, float16 (goal on a GPU: >= 1.3x)
    report.item("nm_semi_structured", "batch_256_float16", lambda: measure_nm(
        stacks=NM_TINY_STACKS if tiny else NM_STACKS))

    # --- WRN-28-10 steps: dense and the L0 paper's CIFAR-10 preset
    wrn_info = DatasetInfo("synthetic", (3, sizes.side, sizes.side), 10, "image")
    wrn_loader = device_batches(images, labels, sizes.wrn_batch, limit_batches=sizes.wrn_warmup_steps + sizes.wrn_steps)
    wrn_common = [f"dataset.batch_size={sizes.wrn_batch}", f"hardware={hardware}", *sizes.wrn_overrides]
    wrn_runs = {
        "dense": ["method=dense", "model=wrn28_10", "dataset=synthetic", *wrn_common],
        "l0 (experiment=l0_cifar10_wrn28_10)": ["experiment=l0_cifar10_wrn28_10", *wrn_common],
    }
    wrn_flops = report.item("flops", "wrn28_10", lambda: {
        "forward_flops_per_image": forward_flops_per_image(["model=wrn28_10", *sizes.wrn_overrides], wrn_info)})
    for name, overrides in wrn_runs.items():
        measured = report.item("wrn28_10", name, lambda o=overrides: platform_seconds(
            o, wrn_info, wrn_loader, device, Clock(device, warmup_steps=sizes.wrn_warmup_steps), 1, run_root))
        throughput(measured, sizes.wrn_batch, sizes.images, wrn_flops["forward_flops_per_image"] if wrn_flops else None,
                   peak)
        if measured:
            measured["extrapolated_to"] = f"{sizes.images} images per epoch, batch {sizes.wrn_batch}"
            measured[f"hours_for_{PAPER_EPOCHS}_epochs"] = measured["seconds_per_epoch"] * PAPER_EPOCHS / 3600
    report.write()

    # --- goals
    bare_row = rows.get("bare", {})
    met = {
        "dense_epoch_seconds": dense.get("seconds_per_epoch"),
        "platform_over_bare": dense.get("ratio_to_bare"),
        "sfw_over_dense_step": rows.get("sfw", {}).get("ratio_to_dense_step"),
        "l0_over_dense_step": rows.get("l0", {}).get("ratio_to_dense_step"),
    }
    report.record["goal_results"] = {key: {"measured": value, "goal": GOALS[key],
                                           "met": None if value is None else value <= GOALS[key]}
                                     for key, value in met.items()}
    delivered = (report.record.get("data_loader", {}).get("cifar") or {}).get("device_loader_to_model")
    report.record["goal_results"]["device_loader_over_model"] = {
        "measured": delivered, "goal": f">= {LOADER_GOAL}", "met": None if delivered is None else delivered >= LOADER_GOAL}
    nm_rows = (report.record.get("nm_semi_structured", {}).get("batch_256_float16") or {}).get("stacks", {})
    for name, row in nm_rows.items():
        speedup = row["gpu"].get("speedup")
        report.record["goal_results"][f"nm_speedup {name}"] = {
            "measured": speedup, "goal": f">= {NM_GOAL_SPEEDUP}", "met": None if speedup is None else speedup >= NM_GOAL_SPEEDUP}
    report.record["bare_seconds_per_epoch"] = bare_row.get("seconds_per_epoch")
    report.write()

    # --- the CUDA-marked tests, in what the budget leaves (at least TESTS_MIN_SECONDS)
    if not args.skip_tests:
        remaining = max(TESTS_MIN_SECONDS, args.budget - report.elapsed() - COMPILE_RESERVE_SECONDS / 2)
        report.item("tests", "pytest -m gpu", lambda: run_tests(remaining))

    # --- optional: dense with torch.compile, compilation included, if the budget leaves room for it
    # (never at the tiny size, where compiling would take far longer than everything else)
    if not tiny and args.budget - report.elapsed() > COMPILE_RESERVE_SECONDS:
        overrides = ["method=dense", *base, "hardware.compile=true"]

        def compiled() -> dict[str, Any]:
            clock = Clock(device, sizes.warmup_epochs)
            started = time.perf_counter()
            result = platform_seconds(overrides, info, loader, device, clock, epochs, run_root)
            result["seconds_including_compilation_and_warmup"] = time.perf_counter() - started
            return result

        measured = report.item(table, "dense_compiled", compiled)
        throughput(measured, sizes.batch, sizes.images, flops_per_image, peak)
        if measured and "seconds_per_step" in dense:
            measured["ratio_to_dense_step"] = measured["seconds_per_step"] / dense["seconds_per_step"]
        if measured and "seconds_per_epoch" in rows.get("bare", {}):
            measured["ratio_to_bare"] = measured["seconds_per_epoch"] / rows["bare"]["seconds_per_epoch"]
        report.write()
    else:
        report.record.setdefault(table, {})["dense_compiled"] = {"skipped": "tiny size" if tiny else "time budget"}
        report.write()
    print_table(report.record)
    print(f"gpu_check: {report.elapsed():.0f} s; {report.path}", flush=True)


def print_table(record: dict[str, Any]) -> None:
    def number(value: Any, pattern: str) -> str:
        return pattern % value if isinstance(value, (int, float)) else "-"

    table = record["sizes"]["model"]
    print(f"\n{table}, batch {record['sizes']['batch']}")
    print(f"  {'run':16s} {'s/epoch':>8s} {'images/s':>10s} {'x bare':>7s} {'x dense':>8s} {'% bf16 peak':>11s}")
    for name, row in record.get(table, {}).items():
        if "error" in row or "skipped" in row:
            print(f"  {name:16s} {row.get('error', row.get('skipped'))}")
            continue
        fraction = row.get("fraction_of_bf16_peak")
        print(f"  {name:16s} {number(row.get('seconds_per_epoch'), '%8.2f')} {number(row.get('images_per_second'), '%10.0f')} "
              f"{number(row.get('ratio_to_bare'), '%7.2f')} {number(row.get('ratio_to_dense_step'), '%8.2f')} "
              f"{number(None if fraction is None else 100 * fraction, '%11.1f')}")
    for name, row in record.get("wrn28_10", {}).items():
        if "seconds_per_epoch" in row:
            print(f"WRN-28-10 {name}: {row['seconds_per_step'] * 1000:.1f} ms/step, {row['seconds_per_epoch']:.1f} s/epoch, "
                  f"{row[f'hours_for_{PAPER_EPOCHS}_epochs']:.2f} h for {PAPER_EPOCHS} epochs")
    lasso = record.get("implicit_lasso_rows", {}).get("active_set", {})
    if "speedup" in lasso:
        print(f"implicit_lasso rows: {lasso['device']['rows_per_second']:.0f} rows/s on {record['environment']['device']}, "
              f"{lasso['cpu_1_thread']['rows_per_second']:.0f} rows/s on one CPU thread ({lasso['speedup']:.1f}x)")
    loaders = record.get("data_loader", {}).get("cifar", {})
    if "device_loader_to_model" in loaders:
        print(f"loaders: on-device {loaders['device_loader_images_per_s']:.0f} images/s "
              f"({loaders['device_loader_to_model']:.1f}x the model), CPU {loaders['cpu_loader_images_per_s']:.0f} "
              f"images/s ({loaders['cpu_loader_to_model']:.2f}x), model {loaders['model_images_per_s']:.0f} images/s")
    for key, result in record.get("goal_results", {}).items():
        goal = result["goal"] if isinstance(result["goal"], str) else f"<= {result['goal']}"
        print(f"goal {key}: {number(result['measured'], '%.3f')} ({goal}) met={result['met']}")
    for name, row in (record.get("nm_semi_structured", {}).get("batch_256_float16") or {}).get("stacks", {}).items():
        gpu = row["gpu"]
        print(f"2:4 {name}: " + (f"{gpu['latency_ms']:.3f} ms vs {gpu['dense_latency_ms']:.3f} ms dense "
                                 f"({gpu['speedup']:.2f}x, {gpu['dtype']}, batch {gpu['batch_size']}, {gpu['gpu']})"
                                 if gpu["measured"] else gpu["reason"]))
    tests = record.get("tests", {}).get("pytest -m gpu", {})
    if tests:
        print(f"pytest -m gpu: {tests.get('summary', tests.get('error', 'timed out' if tests.get('timed_out') else ''))}")


if __name__ == "__main__":
    main()
