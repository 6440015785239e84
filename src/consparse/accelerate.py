"""The ``hardware:`` config node, and the one place where it changes the model for training.

``hardware=gpu`` (and ``multigpu``, ``slurm``) train in bf16 mixed precision with cuDNN autotuning
(``trainer.precision``, ``trainer.benchmark``: Lightning's own settings), channels_last
convolutions and, opt-in, ``torch.compile``. The last two act on the model, for every method alike:
``prepare_model`` before ``Trainer.fit``, ``release_model`` after it, so that finalising, pruning,
counting, latency and export see the same eager, contiguous model as on a CPU run.

Compilation is ``nn.Module.compile``: the module stays itself (its class, parameters, state_dict
keys and checkpoints are unchanged, and gating or constraint bookkeeping still finds its layers),
only its ``__call__`` goes through the compiled graph. ``torch.compile(model)`` would instead return
an ``OptimizedModule`` whose state_dict keys carry an ``_orig_mod.`` prefix.

``num_workers`` and ``on_device_data`` are read by the datamodules (``consparse.data``); they are
validated here with the rest of the node so that a bad value fails before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from consparse.errors import ParameterError, config_key
from consparse.validation import check_int, settings_from


@dataclass(frozen=True)
class HardwareSettings:
    """The ``hardware:`` node (meanings in conf/config.yaml)."""

    compile: bool = False
    channels_last: bool = False
    num_workers: int = 0
    on_device_data: bool = False

    @classmethod
    def from_config(cls, node: Any) -> HardwareSettings:
        """The settings of the ``hardware`` node (the config boundary: errors name ``hardware.<key>``)."""
        with config_key("hardware"):
            settings = settings_from(cls, node)
            for name in ("compile", "channels_last", "on_device_data"):
                if not isinstance(getattr(settings, name), bool):
                    raise ParameterError(name, f"got {getattr(settings, name)!r}; allowed: true or false")
            check_int("num_workers", settings.num_workers, 0)
        return settings


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def prepare_model(model: nn.Module, settings: HardwareSettings) -> nn.Module:
    """Apply channels_last (conv nets only) and ``torch.compile`` to ``model`` in place; returns it."""
    if settings.channels_last and has_convolutions(model):
        model.to(memory_format=torch.channels_last)
    if settings.compile:
        model.compile()
    return model


def release_model(model: nn.Module) -> nn.Module:
    """Undo ``prepare_model`` in place: eager calls and contiguous weights; returns the model.

    Needed before the model is copied (pruning, folding, export deep-copy it): a copy of a compiled
    module would keep calling the original's compiled graph. ``nn.Module.compile`` has no public
    inverse; it stores the compiled call in ``_compiled_call_impl``, which ``__call__`` uses when set.
    """
    if is_compiled(model):
        model._compiled_call_impl = None
    if has_convolutions(model):
        model.to(memory_format=torch.contiguous_format)
    return model


def is_compiled(model: nn.Module) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None
