"""``build_method(cfg.method, model, info)``: the method group node becomes a LightningModule."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig
from torch import nn

from consparse.config import instantiate_node
from consparse.data.info import DatasetInfo
from consparse.errors import ConfigError
from consparse.methods.base import SparseMethod
from consparse.models.registry import ARCHITECTURES


def build_method(cfg: DictConfig | dict, model: nn.Module, info: DatasetInfo) -> SparseMethod:
    """Instantiate the method around ``model``; constructors validate their config values, and this is
    the config boundary of ``method``: their errors name ``method.<argument>``, except those about
    the ``model`` argument, which come from the ``model`` node and name ``model.<...>``.

    A method's ``requires_model`` is checked first, so that its constructor only ever sees the model it trains.
    """
    check_required_model(cfg, model)
    method = instantiate_node(cfg, "method", {"model": "model"}, model=model, info=info)
    if not isinstance(method, SparseMethod):
        raise TypeError(f"method._target_ must build a consparse SparseMethod, got {type(method).__name__}")
    return method


def required_model(cfg: DictConfig | dict) -> str | None:
    """The ``model`` config the method of ``cfg`` trains (its class's ``requires_model``), or None for any."""
    return getattr(hydra.utils.get_class(cfg["_target_"]), "requires_model", None)


def check_required_model(cfg: DictConfig | dict, model: nn.Module) -> None:
    """A ConfigError naming ``model`` when the method needs another kind of model than ``model``."""
    required = required_model(cfg)
    if required is not None and not isinstance(model, ARCHITECTURES[required]):
        raise ConfigError(
            "model", f"method={cfg.get('name')} trains model={required} only: use model={required} "
            f"(got {type(model).__name__})",
        )
