"""Every conf/dataset/*.yaml: instantiable, complete, and its datamodule's static contract.

These checks need no dataset files: ``root`` points at an empty folder, which is the point (the
model is built from ``info`` before any file is read).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from consparse.config import instantiate_node
from consparse.data.base import ConsparseDataModule
from consparse.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "dataset"

# name -> (input_shape, num_classes, kind) as the yaml defaults must give them.
EXPECTED_INFO = {
    "digits": ((1, 8, 8), 10, "image"),
    "synthetic": ((1, 28, 28), 10, "image"),
    "mnist": ((1, 28, 28), 10, "image"),
    "fashion_mnist": ((1, 28, 28), 10, "image"),
    "cifar10": ((3, 32, 32), 10, "image"),
    "cifar100": ((3, 32, 32), 100, "image"),
    "tinyimagenet": ((3, 64, 64), 200, "image"),
    "imagenet": ((3, 224, 224), 1000, "image"),
    "newsgroups20": ((10000,), 20, "text"),
    "newsgroups20_tokens": ((2, 256), 20, "text"),
}


def load_node(name: str, tmp_path: Path):
    """The yaml of ``name`` with the lead's ``paths`` interpolations pointed into ``tmp_path``."""
    raw = OmegaConf.load(CONF_DIR / f"{name}.yaml")
    paths = {"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache")}
    config = OmegaConf.merge({"paths": paths}, {"dataset": raw})
    return config.dataset


def constructor_options(cls: type) -> set[str]:
    """Named parameters of ``cls.__init__`` and of every base class it forwards ``**kwargs`` to."""
    options: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, ConsparseDataModule):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        options |= {
            p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    return options


def test_every_dataset_has_a_yaml():
    assert {path.stem for path in CONF_DIR.glob("*.yaml")} == set(EXPECTED_INFO)


@pytest.mark.parametrize("name", sorted(EXPECTED_INFO))
def test_yaml_instantiates_with_static_info(name, tmp_path):
    node = load_node(name, tmp_path)
    assert node.name == name
    datamodule = instantiate_node(node, "dataset")
    assert isinstance(datamodule, ConsparseDataModule)
    info = datamodule.info
    assert (info.name, info.input_shape, info.num_classes, info.kind) == (name, *EXPECTED_INFO[name])
    assert not (tmp_path / "data").exists(), "info or construction must not touch the data folder"


@pytest.mark.parametrize("name", sorted(EXPECTED_INFO))
def test_composed_through_the_main_config(name, make_config, tmp_path):
    config = make_config(
        f"dataset={name}", f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'c'}"
    )
    datamodule = instantiate_node(config.dataset)
    assert datamodule.info.name == name
    expected_root = tmp_path / "data" / ("imagenet" if name == "imagenet" else "")
    assert datamodule.root == expected_root
    if name == "newsgroups20":
        assert datamodule.cache_dir == tmp_path / "c"


@pytest.mark.parametrize("name", sorted(EXPECTED_INFO))
def test_yaml_lists_every_constructor_option_with_a_comment(name, tmp_path):
    node = load_node(name, tmp_path)
    datamodule = instantiate_node(node, "dataset")
    listed = set(node.keys()) - {"_target_", "name"}
    assert listed == constructor_options(type(datamodule))
    text = (CONF_DIR / f"{name}.yaml").read_text()
    for key in listed:
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert "#" in line, f"{name}.yaml: option {key} has no comment"


@pytest.mark.parametrize("name", sorted(EXPECTED_INFO))
def test_global_batch_is_divided_over_processes(name, tmp_path):
    node = load_node(name, tmp_path)
    node.batch_size = 64
    datamodule = instantiate_node(node, "dataset")
    assert datamodule.per_device_batch_size == 64
    datamodule.trainer = SimpleNamespace(world_size=4)
    assert datamodule.per_device_batch_size == 16
    datamodule.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ConfigError) as error:
        _ = datamodule.per_device_batch_size
    assert error.value.field == "dataset.batch_size"


# (dataset, field, bad value): each must fail in the constructor, naming the field.
BAD_VALUES = [
    ("mnist", "batch_size", 0),
    ("mnist", "val_fraction", 0.9),
    ("mnist", "download_timeout", 0),
    ("fashion_mnist", "num_workers", -1),
    ("cifar10", "download_timeout", -5),
    ("cifar100", "max_train_samples", 0),
    ("tinyimagenet", "source", "zip"),
    ("tinyimagenet", "hf_dataset_id", ""),
    ("imagenet", "num_classes", 1),
    ("imagenet", "image_size", 4),
    ("imagenet", "resize_size", 100),  # smaller than image_size 224
    ("newsgroups20", "source", "web"),
    ("newsgroups20", "remove", ["signatures"]),
    ("newsgroups20", "remove", "headers"),
    ("newsgroups20", "remove", None),
    ("newsgroups20", "vocab_size", 0),
    ("newsgroups20", "stop_words", "french"),
    ("digits", "test_fraction", 0.9),
    ("synthetic", "num_classes", 1),
]


@pytest.mark.parametrize(("name", "field", "value"), BAD_VALUES)
def test_bad_config_value_names_the_field(name, field, value, tmp_path):
    node = load_node(name, tmp_path)
    node[field] = value
    with pytest.raises(ConfigError) as error:
        instantiate_node(node, "dataset")
    assert error.value.field == f"dataset.{field}"
