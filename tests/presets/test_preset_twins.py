"""A dataset twin (a preset whose defaults list names another preset) is that preset on another dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = CONF / "experiment"
PRESETS = {path.stem for path in EXPERIMENTS.glob("[!_]*.yaml")}


def included_preset(name: str) -> str | None:
    """The preset a preset's defaults list includes, if any."""
    defaults = OmegaConf.load(EXPERIMENTS / f"{name}.yaml").get("defaults", [])
    found = [entry for entry in defaults if isinstance(entry, str) and entry in PRESETS]
    return found[0] if found else None


TWINS = sorted((name, base) for name in PRESETS if (base := included_preset(name)) is not None)


def job_config(preset: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    container = OmegaConf.to_container(cfg, resolve=False)
    for key in ("runtime", "overrides", "job"):  # the choice and command line name the preset itself
        container["hydra"].pop(key)
    return container


def test_the_dataset_twins_include_their_twin() -> None:
    assert {"sfw_fashion_mnist_mlp", "implicit_fw_fashion_mnist", "l0_cifar100_wrn28_10"} <= {t for t, _ in TWINS}


@pytest.mark.parametrize(("twin", "base"), TWINS, ids=[t for t, _ in TWINS])
def test_a_twin_differs_from_its_base_only_in_the_dataset(twin: str, base: str) -> None:
    twin_cfg, base_cfg = job_config(twin), job_config(base)
    assert twin_cfg["dataset"]["name"] != base_cfg["dataset"]["name"]
    assert twin_cfg["dataset"]["batch_size"] == base_cfg["dataset"]["batch_size"]
    for cfg in (twin_cfg, base_cfg):
        cfg.pop("dataset")
        if cfg["setting"]["name"] is not None:  # a comparison names itself
            cfg["setting"].pop("name")
    assert twin_cfg == base_cfg
