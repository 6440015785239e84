"""``build_model(cfg.model, info)``: plain PyTorch modules sized by the dataset, no method logic."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from consparse.config import instantiate_node
from consparse.data.info import DatasetInfo


def build_model(cfg: DictConfig | dict, info: DatasetInfo) -> nn.Module:
    """Instantiate ``cfg`` (a ``model`` group node with ``_target_``) with the dataset's input shape and classes."""
    return instantiate_node(cfg, input_shape=list(info.input_shape), num_classes=info.num_classes)
