"""Every method config with a model it trains, read from ``conf/method``: a new method is covered by
the tests that use this list without editing them."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from consparse.methods.registry import required_model

METHOD_CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


def method_models() -> list[tuple[str, str]]:
    """``(method, model)`` for every method: the model its class requires, else ``mlp``."""
    methods = sorted(path.stem for path in METHOD_CONF.glob("[!_]*.yaml"))  # "_*": bases, not methods
    return [(method, required_model(OmegaConf.load(METHOD_CONF / f"{method}.yaml")) or "mlp") for method in methods]
