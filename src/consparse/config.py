"""Turning config nodes into objects (lightning-hydra-template style ``_target_`` instantiation)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from consparse.errors import ConfigPlace, ConsparseError, config_key, parameter_prefix
from consparse.validation import check_known_keys

# Keys that describe a config node for humans and results.json but are not constructor arguments.
DESCRIPTIVE_KEYS = ("name",)


def instantiate_node(
    node: DictConfig | dict, key: str | None = None, argument_keys: Mapping[str, str] | None = None, **kwargs: Any
) -> Any:
    """Instantiate a group node (``dataset``, ``model``, ``method``) without its descriptive keys.

    ``key`` is the node's place in the config: the boundary. Keys the target does not take, and any
    ``ParameterError`` its constructor raises, are reported as a ``ConfigError`` under ``key``, or
    under ``argument_keys[a]`` when it names ``a``, an argument passed in ``kwargs`` from another node.
    An object with a ``config_place`` attribute is told its place, for errors raised later in hooks.
    Runtime objects (a model, a DatasetInfo) are passed to the constructor directly rather than
    through Hydra, which would turn dataclasses into configs.
    """
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    for name in DESCRIPTIVE_KEYS:
        container.pop(name, None)
    place = None if key is None else ConfigPlace(key, dict(argument_keys or {}))
    with config_key(place):
        check_arguments_taken(container, kwargs)
        try:
            factory = hydra.utils.instantiate(container, _convert_="all", _partial_=True)
        except InstantiationException as error:
            # Hydra wraps errors of nested targets; a ConsparseError already says what to fix.
            if isinstance(error.__cause__, ConsparseError):
                raise error.__cause__ from None
            raise
        built = factory(**kwargs)
    if hasattr(built, "config_place"):
        built.config_place = place
    return built


def check_arguments_taken(container: dict[str, Any], passed: Mapping[str, Any]) -> None:
    """A ParameterError naming the node when it, or a node with a ``_target_`` inside it (an
    optimizer), has keys its ``_target_`` does not take (known from the target's signature; a target
    that forwards ``**kwargs`` to code outside consparse is not checked)."""
    target = container.get("_target_")
    try:
        accepted = taken_arguments(hydra.utils.get_object(target)) if isinstance(target, str) else None
    except Exception:  # noqa: BLE001 - an unimportable target is Hydra's error to report, with its traceback
        accepted = None
    if accepted is not None:
        given = {name: None for name in container if not name.startswith("_") and name not in passed}
        check_known_keys("", given, [name for name in accepted if name not in passed])
    for name, value in container.items():
        if isinstance(value, dict) and "_target_" in value and name not in passed:
            with parameter_prefix(name):
                check_arguments_taken(value, {})


def taken_arguments(target: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``target`` takes, following ``**kwargs`` up a consparse class's bases;
    None when they reach code outside consparse (anything could be taken)."""
    callables = [base.__init__ for base in target.__mro__] if isinstance(target, type) else [target]
    names: list[str] = []
    for function in callables:
        if not getattr(function, "__module__", "").startswith("consparse"):
            return None
        parameters = inspect.signature(function).parameters.values()
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in ("self", *names)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


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
