"""``build_model(cfg.model, info)`` and the architectures a model may be described by as data.

A run builds its model from the config's ``_target_`` (the config is the user's own code, see the
design). An exported model names its architecture instead: a key of ``ARCHITECTURES`` with its
constructor arguments as JSON values, so that reading an export never imports or calls anything
that the file names (a ``_target_`` would run whatever callable a stranger's file points at).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from consparse.config import DESCRIPTIVE_KEYS, instantiate_node
from consparse.data.info import DatasetInfo
from consparse.errors import ConsparseError
from consparse.models.implicit import ImplicitModel
from consparse.models.implicit_deployed import DeployedImplicitModel
from consparse.models.lenet import LeNet5
from consparse.models.mlp import MLP
from consparse.models.resnet import CifarResNet, resnet18, resnet50
from consparse.models.wide_resnet import WideResNet

# Every builder takes ``input_shape`` and ``num_classes`` (from the dataset) and keyword arguments.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "cifar_resnet": CifarResNet,
    "wide_resnet": WideResNet,
    "implicit": ImplicitModel,
    "implicit_deployed": DeployedImplicitModel,
}
# Arguments every builder takes from the dataset, kept apart from the architecture's own.
DATASET_ARGUMENTS = ("input_shape", "num_classes")


class ArchitectureError(ConsparseError):
    """An architecture description names an unknown architecture or argument, or a non-JSON value."""


def build_model(cfg: DictConfig | dict, info: DatasetInfo) -> nn.Module:
    """Instantiate ``cfg`` (the ``model`` group node, with ``_target_``) with the dataset's input shape
    and classes; the config boundary of ``model``: errors name ``model.<argument>``."""
    return instantiate_node(cfg, "model", input_shape=list(info.input_shape), num_classes=info.num_classes)


def is_json_value(value: Any) -> bool:
    """A JSON scalar (null, bool, number, string) or a list of such values, nested lists included."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_json_value(v) for v in value)
    return False


def _target_path(builder: Callable[..., nn.Module]) -> str:
    return f"{builder.__module__}.{builder.__qualname__}"


def _own_arguments(builder: Callable[..., nn.Module]) -> list[str]:
    """The keyword arguments a builder accepts beside the dataset's: its fixed allow-list."""
    parameters = inspect.signature(builder).parameters.values()
    return [
        p.name for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in DATASET_ARGUMENTS
    ]


def check_arguments(architecture: str, arguments: Mapping[str, Any]) -> None:
    """Raise ArchitectureError unless ``architecture`` is registered and takes ``arguments`` as JSON values."""
    if architecture not in ARCHITECTURES:
        raise ArchitectureError(
            f"unknown architecture {architecture!r}; registered: {', '.join(sorted(ARCHITECTURES))}"
        )
    allowed = _own_arguments(ARCHITECTURES[architecture])
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise ArchitectureError(
            f"architecture {architecture!r} takes no argument {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    for name, value in arguments.items():
        if not is_json_value(value):
            raise ArchitectureError(
                f"argument {name!r} of architecture {architecture!r} must be a JSON number, string, "
                f"bool, null or list of them, got {type(value).__name__}"
            )


def check_dataset_arguments(input_shape: Any, num_classes: Any) -> None:
    """Raise ArchitectureError unless the shape is a list of positive integers and the classes one."""
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    if not isinstance(input_shape, (list, tuple)) or not input_shape or not all(map(positive_int, input_shape)):
        raise ArchitectureError(f"input_shape must be a list of positive integers, got {input_shape!r}")
    if not positive_int(num_classes):
        raise ArchitectureError(f"num_classes must be a positive integer, got {num_classes!r}")


def architecture_of_target(target: Any) -> str:
    """The registered name of the builder a config's ``_target_`` names; ArchitectureError if none."""
    names = {_target_path(builder): name for name, builder in ARCHITECTURES.items()}
    if target not in names:
        raise ArchitectureError(
            f"the model {target!r} is not a registered architecture; register its builder in "
            "consparse.models.registry.ARCHITECTURES so that an export can name it"
        )
    return names[target]


def describe_architecture(node: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """``{architecture, arguments, input_shape, num_classes}`` for a model node.

    ``node`` is either a config node (``_target_`` naming a registered builder, its arguments and
    the dataset's ``input_shape`` and ``num_classes``) or already such a description.
    """
    plain = dict(OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node)
    if "architecture" in plain:
        architecture = plain["architecture"]
        arguments = dict(plain.get("arguments") or {})
    else:
        architecture = architecture_of_target(plain.pop("_target_", None))
        arguments = {k: v for k, v in plain.items() if k not in (*DATASET_ARGUMENTS, *DESCRIPTIVE_KEYS)}
    arguments = {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}
    check_arguments(architecture, arguments)
    check_dataset_arguments(plain.get("input_shape"), plain.get("num_classes"))
    return {
        "architecture": architecture,
        "arguments": arguments,
        "input_shape": list(plain["input_shape"]),
        "num_classes": plain["num_classes"],
    }


def build_architecture(description: Mapping[str, Any]) -> nn.Module:
    """Build the model a ``describe_architecture`` result names, after checking every field of it."""
    architecture, arguments = description.get("architecture"), description.get("arguments")
    if not isinstance(architecture, str) or not isinstance(arguments, Mapping):
        raise ArchitectureError(
            f"'architecture' must be a name and 'arguments' a mapping, got {architecture!r} and {arguments!r}"
        )
    check_arguments(architecture, arguments)
    check_dataset_arguments(description.get("input_shape"), description.get("num_classes"))
    try:
        return ARCHITECTURES[architecture](
            input_shape=list(description["input_shape"]), num_classes=description["num_classes"], **arguments
        )
    except ConsparseError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ArchitectureError(f"cannot build architecture {architecture!r} from {dict(arguments)}: {exc}") from None
