"""Every method x model x dataset combination composes and builds, or fails with a clear ConfigError."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from consparse.compress.count import sparsifiable_weights
from consparse.config import instantiate_node
from consparse.errors import ConfigError
from consparse.methods import build_method
from consparse.methods.registry import required_model
from consparse.models import build_model
from consparse.models.registry import ARCHITECTURES

REPO_CONF = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf"
# A name starting with "_" is a base other configs include (method/_hard_concrete.yaml), not an option.
METHODS = sorted(p.stem for p in (REPO_CONF / "method").glob("[!_]*.yaml"))
MODELS = sorted(p.stem for p in (REPO_CONF / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (REPO_CONF / "dataset").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (REPO_CONF / "hardware").glob("*.yaml"))
# The model each method trains, from its class's requires_model (None: any model).
REQUIRED_MODEL = {method: required_model(OmegaConf.load(REPO_CONF / "method" / f"{method}.yaml")) for method in METHODS}
EXPERIMENTS = sorted(p.stem for p in (REPO_CONF / "experiment").glob("[!_]*.yaml"))

CONV_MODELS = {"lenet5", "resnet18", "resnet20", "resnet50", "wrn28_10"}
# Small models every method is built around (the large ones are covered by the model x dataset grid).
SMALL_MODELS = ("mlp", "lenet5")


# Transformers take token inputs only; built here tiny and random (pretrained weights would be a download).
TRANSFORMER_MODELS = {"distilbert": ["model.pretrained=false", "model.config={model_type:distilbert,vocab_size:64,dim:8,n_layers:1,n_heads:2,hidden_dim:16}"]}
TOKEN_DATASETS = {"newsgroups20_tokens"}


def expected_model_error(model: str, dataset: str) -> str | None:
    """Why a model cannot take a dataset's input, or None when it can."""
    if model in TRANSFORMER_MODELS:
        return None if dataset in TOKEN_DATASETS else "token input"
    if model in CONV_MODELS and dataset in ("newsgroups20", *TOKEN_DATASETS):
        return "needs image inputs"
    if model == "lenet5" and dataset == "digits":
        return "image_size"
    return None


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_takes_every_dataset_or_says_why(make_config, model: str, dataset: str) -> None:
    cfg = make_config(f"model={model}", f"dataset={dataset}", *TRANSFORMER_MODELS.get(model, []))
    info = instantiate_node(cfg.dataset).info
    reason = expected_model_error(model, dataset)
    with torch.device("meta"):
        if reason is None:
            net = build_model(cfg.model, info)
            out = net(torch.empty(2, *info.input_shape))
            assert tuple(out.shape) == (2, info.num_classes)
        else:
            with pytest.raises(ConfigError, match=reason):
                build_model(cfg.model, info)


@pytest.mark.parametrize("model", SMALL_MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_around_small_models(make_config, method: str, model: str) -> None:
    cfg = make_config(f"method={method}", f"model={model}", "dataset=synthetic")
    info = instantiate_node(cfg.dataset).info
    required = REQUIRED_MODEL[method]
    if required is not None and required != model:
        with pytest.raises(ConfigError, match=f"use model={required}"):
            build_method(cfg.method, build_model(cfg.model, info), info)
        return
    built = build_method(cfg.method, build_model(cfg.model, info), info)
    assert sparsifiable_weights(built.model), f"{method} sparsifies nothing on {model}"


def test_the_implicit_training_methods_require_the_implicit_model() -> None:
    assert {method for method, model in REQUIRED_MODEL.items() if model == "implicit"} >= {"implicit_fw", "implicit_pgd"}


@pytest.mark.parametrize("method", sorted(method for method, model in REQUIRED_MODEL.items() if model is not None))
def test_a_method_builds_around_the_model_it_requires(make_config, method: str) -> None:
    required = REQUIRED_MODEL[method]
    cfg = make_config(f"method={method}", f"model={required}", "dataset=synthetic")
    info = instantiate_node(cfg.dataset).info
    built = build_method(cfg.method, build_model(cfg.model, info), info)
    assert isinstance(built.model, ARCHITECTURES[required])
    assert sparsifiable_weights(built.model), f"{method} sparsifies nothing on model={required}"


@pytest.mark.parametrize("hardware", HARDWARE)
def test_hardware_presets_compose(make_config, hardware: str) -> None:
    cfg = make_config(f"hardware={hardware}")
    assert cfg.trainer.accelerator in ("cpu", "gpu")
    assert cfg.trainer.devices >= 1


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_presets_compose_and_build(make_config, experiment: str) -> None:
    cfg = make_config(f"experiment={experiment}")
    if cfg.model.name in TRANSFORMER_MODELS:
        cfg = make_config(f"experiment={experiment}", *TRANSFORMER_MODELS[cfg.model.name])
    info = instantiate_node(cfg.dataset).info
    with torch.device("meta"):
        build_model(cfg.model, info)


def test_slurm_preset_gives_one_task_per_device() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_CONF), version_base="1.3"):
        cfg = compose(
            "config", overrides=["hardware=slurm", "trainer.devices=8", "trainer.num_nodes=2"], return_hydra_config=True
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.enable_progress_bar is False
