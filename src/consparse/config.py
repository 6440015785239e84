"""Turning config nodes into objects (lightning-hydra-template style ``_target_`` instantiation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from consparse.errors import ConsparseError

# Keys that describe a config node for humans and results.json but are not constructor arguments.
DESCRIPTIVE_KEYS = ("name",)


def instantiate_node(node: DictConfig | dict, **kwargs: Any) -> Any:
    """Instantiate a group node (``dataset``, ``model``, ``method``) without its descriptive keys.

    Runtime objects (a model, a DatasetInfo) are passed to the constructor directly rather than
    through Hydra, which would turn dataclasses into configs.
    """
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    for key in DESCRIPTIVE_KEYS:
        container.pop(key, None)
    try:
        factory = hydra.utils.instantiate(container, _convert_="all", _partial_=True)
    except InstantiationException as error:
        # Hydra wraps errors of nested targets; a ConsparseError already says what to fix.
        if isinstance(error.__cause__, ConsparseError):
            raise error.__cause__ from None
        raise
    return factory(**kwargs)


def node_name(node: DictConfig | dict, default: str = "?") -> str:
    """The ``name`` a group node gives itself (falls back to ``default``)."""
    return str(node.get("name", default)) if node is not None else default


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    """What a job runs, as results.json names it: ``method``, ``model``, ``dataset`` and ``seed``."""
    return {
        "method": node_name(cfg.method),
        "model": node_name(cfg.model),
        "dataset": node_name(cfg.dataset),
        "seed": cfg.seed,
    }


def job_description(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """What a job belongs to, as results.json names it beside ``job_identity``: ``setting`` (the
    comparison: ``name`` and the ``model`` whose table it joins), ``variant`` (its arm: the block of a
    block sweep, else the method's name), ``overrides``, the resolved ``method_config`` and ``tuning``."""
    setting = cfg.get("setting")
    setting = OmegaConf.to_container(setting, resolve=True) if isinstance(setting, DictConfig) else {}
    try:
        method = OmegaConf.to_container(cfg.method, resolve=True)
    except OmegaConfBaseException:  # a failed run whose method node does not resolve is still recorded
        method = OmegaConf.to_container(cfg.method, resolve=False)
    # How a tuned block sweep chose this job's hyperparameter (consparse.tuning); null otherwise.
    tuning = cfg.get("tuning")
    return {
        "setting": {"name": setting.get("name"), "model": setting.get("model")},
        "variant": str(cfg.get("variant") or node_name(cfg.method)),
        "overrides": [str(o) for o in overrides],
        "method_config": method,
        "tuning": OmegaConf.to_container(tuning, resolve=True) if isinstance(tuning, DictConfig) else None,
    }
