"""``build_method(cfg.method, model, info)``: the method group node becomes a LightningModule."""

from __future__ import annotations

from omegaconf import DictConfig

from torch import nn

from consparse.config import instantiate_node
from consparse.data.info import DatasetInfo
from consparse.methods.base import SparseMethod


def build_method(cfg: DictConfig | dict, model: nn.Module, info: DatasetInfo) -> SparseMethod:
    """Instantiate the method around ``model``; constructors validate their config values."""
    method = instantiate_node(cfg, model=model, info=info)
    if not isinstance(method, SparseMethod):
        raise TypeError(f"method._target_ must build a consparse SparseMethod, got {type(method).__name__}")
    return method
