"""Lightning callbacks a user adds from the config, beside the ones every run has.

Two places name them: the ``callbacks`` group (``callbacks=[early_stopping,lr_monitor]``, one node
per callback in ``conf/callbacks/``) and ``trainer.callbacks`` (``+trainer.callbacks=[{_target_:
...}]``), which Lightning users reach for first. Both are instantiated here and appended to the
platform's callbacks, so neither replaces checkpointing nor the training timer.
"""

from __future__ import annotations

from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig

from consparse.errors import ConfigError, ParameterError, join_key


def configured_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The callbacks of ``cfg.callbacks`` and then of ``cfg.trainer.callbacks``, instantiated."""
    nodes: list[tuple[str, Any]] = [
        (f"callbacks.{name}", node) for name, node in (cfg.get("callbacks") or {}).items() if node is not None
    ]
    listed = cfg.trainer.get("callbacks")
    if isinstance(listed, DictConfig):
        nodes += [(f"trainer.callbacks.{name}", node) for name, node in listed.items() if node is not None]
    elif isinstance(listed, ListConfig):
        nodes += [(f"trainer.callbacks[{index}]", node) for index, node in enumerate(listed)]
    elif listed is not None:
        raise ConfigError("trainer.callbacks", f"got {listed!r}; allowed: a list of nodes with a _target_")
    return [_instantiate(key, node) for key, node in nodes]


def _instantiate(key: str, node: Any) -> pl.Callback:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(
            key,
            f"got {node!r}; a callback is a node with a _target_, e.g. "
            "{_target_: pytorch_lightning.callbacks.EarlyStopping, monitor: val/loss}",
        )
    try:
        callback = hydra.utils.instantiate(node)
    except InstantiationException as error:
        if isinstance(error.__cause__, ParameterError):  # a consparse callback names its argument
            raise ConfigError(join_key(key, error.__cause__.name), error.__cause__.message) from None
        # One line: an import failure's message spans several.
        reason = " ".join(str(error.__cause__ or error).split())
        raise ConfigError(key, f"cannot build {node._target_}: {reason}") from None
    if not isinstance(callback, pl.Callback):
        raise ConfigError(key, f"{node._target_} is not a pytorch_lightning Callback")
    return callback


def wants_progress_bar(callbacks: list[pl.Callback], enable_progress_bar: bool | None) -> bool | None:
    """``trainer.enable_progress_bar`` once a configured progress bar (rich) is taken into account.

    Asking for a progress bar callback turns the bar on where ``null`` would have chosen plain epoch
    lines; an explicit ``false`` contradicts it, which Lightning would only report at fit time.
    """
    if not any(isinstance(callback, pl.callbacks.ProgressBar) for callback in callbacks):
        return enable_progress_bar
    if enable_progress_bar is False:
        raise ConfigError(
            "trainer.enable_progress_bar",
            "is false but a progress bar callback is configured; drop one of them "
            "(callbacks=none, or trainer.enable_progress_bar=null)",
        )
    return True
