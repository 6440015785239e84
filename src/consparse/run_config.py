"""Checks of the run-level config keys no constructor owns: ``seed``, ``trainer.devices``, the optimizer,
and whether the model can be exported as data.

They run twice, like the run-directory check: in ``RunDirGuard`` before Hydra writes anything into
the run directory, and in ``consparse.train.run`` (for callers that bypass Hydra, and for the jobs
of a multirun, which record the failure in their own directory and let the sweep go on).
"""

from __future__ import annotations

from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from consparse.config import DESCRIPTIVE_KEYS
from consparse.errors import ConfigError, config_key
from consparse.models.registry import ArchitectureError, architecture_of_target, check_arguments
from consparse.validation import check_int, check_range

# The seeds every generator Lightning seeds accepts (numpy's bound).
MAX_SEED = 2**32 - 1
# The optimizer arguments torch checks itself, by the word its ValueError uses for each (first match
# wins: a Nesterov message also speaks of momentum).
_OPTIMIZER_WORDS = {"Nesterov": "nesterov", "learning rate": "lr", "momentum": "momentum",
                    "weight_decay": "weight_decay", "beta": "betas", "epsilon": "eps", "dampening": "dampening"}


def check_run_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad key among ``seed``, ``trainer.devices``, the optimizer and
    (when the run exports its model) the model's architecture."""
    with config_key(""):  # the config's root: ``seed`` is a top-level key
        check_int("seed", cfg.get("seed"), 0, MAX_SEED)
    check_devices(OmegaConf.select(cfg, "trainer.devices"))
    optimizer = OmegaConf.select(cfg, "method.optimizer")
    if isinstance(optimizer, DictConfig):
        check_optimizer("method.optimizer", optimizer)
    if OmegaConf.select(cfg, "evaluation.export", default=True) and isinstance(cfg.get("model"), DictConfig):
        check_exportable(cfg.model)


def check_exportable(model: DictConfig) -> None:
    """The model can be exported as data: a registered architecture with JSON arguments.

    Checked before training, so that a model the export cannot describe does not fail the run at its end.
    """
    try:
        arguments = OmegaConf.to_container(model, resolve=True)
        target = arguments.pop("_target_", None)
        for key in DESCRIPTIVE_KEYS:
            arguments.pop(key, None)
        check_arguments(architecture_of_target(target), arguments)
    except ArchitectureError as error:
        raise ConfigError("model", f"{error}, or set evaluation.export=false") from None


def check_devices(devices: Any) -> None:
    """Lightning's ``devices``: 'auto', a count >= 1, -1 (all), or device indices (a list or '0,1')."""
    allowed = "allowed: 'auto', a device count >= 1, -1 (all devices), or a list of device indices"
    if devices is None or devices == "auto":
        return
    if isinstance(devices, str):
        parts = [part.strip() for part in devices.split(",") if part.strip()]
        if not parts or not all(part.lstrip("-").isdigit() for part in parts):
            raise ConfigError("trainer.devices", f"got {devices!r}; {allowed}")
        devices = int(parts[0]) if len(parts) == 1 and "," not in devices else [int(part) for part in parts]
    if isinstance(devices, bool):
        raise ConfigError("trainer.devices", f"got {devices!r}; {allowed}")
    if isinstance(devices, int):
        if devices == 0 or devices < -1:
            raise ConfigError("trainer.devices", f"got {devices}; {allowed} (0 devices cannot train)")
        return
    indices = list(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else None
    if not indices or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise ConfigError("trainer.devices", f"got {devices!r}; {allowed}")


def check_optimizer(field: str, node: DictConfig) -> None:
    """A positive ``lr``; a torch optimizer is also built once on a throw-away tensor so that its own
    argument checks fail here, as a config error, instead of at the start of training."""
    if "lr" in node:
        with config_key(field):
            check_range("lr", node.get("lr"), 0.0, low_inclusive=False, allow_none=True)
    target = str(node.get("_target_", ""))
    if not target.startswith("torch.optim."):
        return  # consparse's own optimizers check their arguments when the method builds them
    factory = hydra.utils.instantiate(node, _partial_=True)
    try:
        factory([torch.zeros(1, requires_grad=True)])
    except (ValueError, TypeError) as error:
        message = str(error)
        key = next((key for word, key in _OPTIMIZER_WORDS.items() if word in message), None)
        raise ConfigError(f"{field}.{key}" if key else field, f"{target} refuses it: {message}") from None
