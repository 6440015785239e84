"""No method reads a tensor back to the host during its training steps.

On a GPU, every ``.item()``, ``float(t)``, ``int(t)``, ``bool(t)`` (an ``if`` on a tensor) or
``.tolist()`` waits for the device to finish all queued work, which starves it. Here every such
conversion raises from the second training batch to the end of the epoch's last batch (the first
batch may set things up; epoch ends may read figures back): the optimiser step, the LMOs, the
Lagrangian's dual step, the gates, and the methods' own hooks are all inside the guarded window.

Exceptions, by the calling file:
* the implicit model's fixed-point solves (``consparse/implicit/solvers.py`` and the convergence
  check ``ImplicitModel._check``): a tolerance-based solve decides on the device's numbers whether to iterate
  again, once per iteration; only a fixed iteration count would avoid it. implicit_fw's budget
  allocation reads the room left once per step for the same kind of decision (its docstring says why);
* magnitude ranking (``consparse/compress/prune.py``) at gmp's pruning events: a threshold over all
  weights, once every ``prune_every`` steps (about 100 times a run), not once per step;
* PyTorch's own optimisers (``torch/optim``) read their step counters, which they keep on the CPU
  for that reason, and the DataLoader's sampler (``torch/utils/data``) works on CPU index tensors.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from consparse.config import instantiate_node
from consparse.methods import build_method
from consparse.models import build_model

CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
# (file, function); None: any function of the file.
ALLOWED_CALLERS = (
    ("consparse/implicit/solvers.py", None),
    ("consparse/models/implicit.py", "_check"),
    ("consparse/methods/implicit_fw.py", "_allocate_budget"),
    ("consparse/compress/prune.py", None),
)
ALLOWED_LIBRARY_DIRS = ("torch/optim/", "torch/utils/data/")


class HostSync(AssertionError):
    pass


@contextmanager
def conversions_raise() -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def guarded(name: str) -> Any:
        original = originals[name]

        def conversion(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            code = sys._getframe(1).f_code
            caller = code.co_filename.replace("\\", "/")
            allowed = any(caller.endswith(file) and function in (None, code.co_name) for file, function in ALLOWED_CALLERS)
            allowed = allowed or any(part in caller for part in ALLOWED_LIBRARY_DIRS)
            if not allowed:
                raise HostSync(f"Tensor.{name} (a host synchronisation) in a training step, called from {caller}")
            return original(self, *args, **kwargs)

        return conversion

    for name in CONVERSIONS:
        setattr(torch.Tensor, name, guarded(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


class SyncGuard(pl.Callback):
    """Arms ``conversions_raise`` from the second training batch until the training epoch ends."""

    def __init__(self) -> None:
        self._guard: Any = None
        self.guarded_batches = 0

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.__exit__(None, None, None)
            self._guard = None

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._disarm()
        if batch_idx >= 1:
            self._guard = conversions_raise()
            self._guard.__enter__()
            self.guarded_batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._disarm()

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        self._disarm()


def test_the_guard_catches_every_conversion() -> None:
    t = torch.ones(())
    with conversions_raise():
        for convert in (lambda: t.item(), lambda: float(t), lambda: bool(t), lambda: int(t), lambda: t.tolist(),
                        lambda: [0, 1][t.long()]):
            with pytest.raises(HostSync):
                convert()
    assert float(t) == 1.0


METHODS = {
    "dense": ("method=dense", "model=lenet5"),
    "magnitude": ("method=magnitude", "model=lenet5", "method.finetune_epochs=1", "trainer.max_epochs=2"),
    "sfw": ("method=sfw", "model=lenet5"),
    "sfw_spectral": ("method=sfw", "model=lenet5", "method.constraint.kind=spectral_ksupport"),
    "gmp": ("method=gmp", "model=lenet5", "method.target_density=0.2", "trainer.max_epochs=2"),
    "l0": ("method=l0", "model=lenet5"),
    "l0_penalty": ("method=l0_penalty", "model=lenet5"),
    "implicit_fw": ("method=implicit_fw", "model=implicit", "model.state_size=24"),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_training_steps_never_read_tensors_back(make_config, name: str) -> None:
    cfg = make_config(*METHODS[name], "dataset=synthetic", "dataset.input_shape=[1,16,16]", "dataset.train_size=160",
                      "dataset.batch_size=32")
    datamodule = instantiate_node(cfg.dataset)
    model = build_model(cfg.model, datamodule.info)
    method = build_method(cfg.method, model, datamodule.info)
    guard = SyncGuard()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=cfg.trainer.max_epochs, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[guard],
    )
    trainer.fit(method, datamodule=datamodule)
    assert guard.guarded_batches >= 3 * cfg.trainer.max_epochs
