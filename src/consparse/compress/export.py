"""Export of a deployed model: weights (safetensors) plus a JSON description to rebuild it.

``<run_dir>/export/model.safetensors`` holds the state_dict; ``<run_dir>/export/model.json`` holds
the resolved run config (informative, never read back), the architecture that builds the dense
skeleton (a name registered in ``consparse.models.registry.ARCHITECTURES``, its arguments,
``input_shape`` and ``num_classes``) and the structure: the edits that turn a freshly built
skeleton into the deployed model's module tree. An export is data, never code: loading imports
nothing the file names, calls only registered builders and the layer types of ``LAYER_TYPES``
with checked JSON arguments, and never unpickles. It builds the skeleton, applies the edits and
loads the state_dict strictly; any malformed or unknown entry is an ExportError naming the file.

Structure edits, applied in order (pre-order over the deployed model's module tree):

* ``{"op": "set", "path", "type", "kwargs"}``: put ``LAYER_TYPES[type](**kwargs)`` at ``path`` (a
  new or replaced module, e.g. a sliced Linear, a low-rank pair, an IndexSelect);
* ``{"op": "delete", "path"}``: remove a module the deployed model does not have;
* ``{"op": "order", "path", "children"}``: reorder a container's children.

A module is described by ``module.constructor_kwargs()`` when it defines it (the modules in
``consparse.compress.layers`` do), otherwise by reading the arguments of its ``__init__`` back from
same-named attributes (how ``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``, activations, pooling
and containers store them; a parameter argument such as ``bias`` becomes ``bias is not None``).
Export checks that the description rebuilds a model with the same state_dict shapes, so an
unexportable module (an unregistered architecture or layer type) fails at export time, not when
someone loads the run.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from consparse.atomic_write import write_atomically
from consparse.compress.layers import ChannelScatter, IndexSelect, LowRankConv2d, LowRankLinear
from consparse.errors import ConsparseError
from consparse.models.registry import build_architecture, describe_architecture, is_json_value

EXPORT_DIR = "export"
STATE_FILE = "model.safetensors"
DESCRIPTION_FILE = "model.json"
EXPORT_FORMAT = "consparse-export"
# Version 1 named Python callables (``_target_``, class paths); it is no longer read.
EXPORT_VERSION = 2
# Constructor arguments that say where a module lives, not what it is.
_PLACEMENT_ARGUMENTS = ("device", "dtype")
# The module types a structure edit may build: what pruning, purging and low-rank decomposition
# put into a deployed model, and the parameter-free layers around them.
LAYER_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Sequential, nn.Identity, nn.Flatten,
        nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
        LowRankLinear, LowRankConv2d, IndexSelect, ChannelScatter,
    )
}
_CHILD_NAME = re.compile(r"[A-Za-z0-9_]+")
_DESCRIPTION_KEYS = (
    "format", "version", "torch_version", "state_file", "architecture", "arguments", "input_shape",
    "num_classes", "structure", "config",
)


class ExportError(ConsparseError):
    """A model cannot be exported or an export cannot be loaded; the message says which part."""


# ----------------------------------------------------------------------------- describing modules
def _layer_name(module: nn.Module) -> str:
    name = type(module).__name__
    if LAYER_TYPES.get(name) is not type(module):
        cls = type(module)
        raise ExportError(
            f"cannot export a {cls.__module__}.{cls.__qualname__}: it is not a layer type an export may "
            "build (consparse.compress.export.LAYER_TYPES)"
        )
    return name


def _json_value(value: Any) -> Any:
    return [_json_value(v) for v in value] if isinstance(value, (list, tuple)) else value


def _layer_arguments(cls: type[nn.Module]) -> dict[str, inspect.Parameter]:
    """The keyword arguments an export may pass to ``cls``: its constructor's, less placement."""
    parameters = list(inspect.signature(cls.__init__).parameters.items())[1:]
    return {
        name: parameter for name, parameter in parameters
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        and name not in _PLACEMENT_ARGUMENTS
    }


def constructor_kwargs(module: nn.Module) -> dict[str, Any]:
    """JSON keyword arguments that rebuild ``module``'s structure (not its values)."""
    own = getattr(module, "constructor_kwargs", None)
    if callable(own):
        return dict(own())
    kwargs: dict[str, Any] = {}
    for name, parameter in _layer_arguments(type(module)).items():
        if name in module._parameters:
            kwargs[name] = module._parameters[name] is not None
            continue
        value = getattr(module, name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and not callable(value) and is_json_value(value):
            kwargs[name] = _json_value(value)
        elif parameter.default is inspect.Parameter.empty:
            raise ExportError(
                f"cannot describe a {type(module).__qualname__}: its constructor argument {name!r} is not stored "
                "as an attribute; give the class a constructor_kwargs() method returning its arguments"
            )
    return kwargs


def _build_layer(name: Any, kwargs: Any) -> nn.Module:
    """``LAYER_TYPES[name](**kwargs)`` after checking the name, the argument names and their JSON types."""
    if not isinstance(name, str) or name not in LAYER_TYPES:
        raise ExportError(f"unknown layer type {name!r}; allowed: {', '.join(sorted(LAYER_TYPES))}")
    if not isinstance(kwargs, Mapping):
        raise ExportError(f"the arguments of a {name} must be a mapping, got {kwargs!r}")
    cls = LAYER_TYPES[name]
    unknown = sorted(set(kwargs) - set(_layer_arguments(cls)))
    if unknown:
        raise ExportError(f"a {name} takes no argument {', '.join(map(repr, unknown))}")
    bad = [key for key, value in kwargs.items() if not is_json_value(value)]
    if bad:
        raise ExportError(f"the arguments {bad} of a {name} are not JSON numbers, strings, bools or lists")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ExportError(f"cannot build a {name} from {dict(kwargs)}: {exc}") from None


def _own_shapes(module: nn.Module) -> dict[str, tuple[int, ...] | None]:
    tensors = {**module._parameters, **module._buffers}
    return {name: None if t is None else tuple(t.shape) for name, t in tensors.items()}


def _same_node(deployed: nn.Module, reference: nn.Module) -> bool:
    return type(deployed) is type(reference) and _own_shapes(deployed) == _own_shapes(reference)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _set_entry(path: str, module: nn.Module) -> tuple[dict[str, Any], nn.Module]:
    """The ``set`` edit describing ``module`` and a fresh module built from it (checked against it)."""
    entry = {"op": "set", "path": path, "type": _layer_name(module), "kwargs": constructor_kwargs(module)}
    where = f"'{path or '<root>'}' ({entry['type']})"
    try:
        fresh = _build_layer(entry["type"], entry["kwargs"])
    except ExportError as exc:
        raise ExportError(f"cannot rebuild {where}: {exc}") from None
    if _own_shapes(fresh) != _own_shapes(module):
        raise ExportError(
            f"{where} rebuilt from {entry['kwargs']} has tensors {_own_shapes(fresh)}, the model has "
            f"{_own_shapes(module)}; give the class a constructor_kwargs() method"
        )
    return entry, fresh


def _children(module: nn.Module) -> dict[str, nn.Module]:
    """Every registered child, a module registered under several names once per name.

    (``named_children`` lists a shared module once, but the state_dict holds it under each name.)
    """
    return {name: child for name, child in module._modules.items() if child is not None}


def _describe(deployed: nn.Module, reference: nn.Module, prefix: str, edits: list[dict[str, Any]]) -> None:
    reference_children = _children(reference)
    deployed_children = _children(deployed)
    deployed_names = list(deployed_children)
    for name, child in deployed_children.items():
        path = _join(prefix, name)
        counterpart = reference_children.get(name)
        if counterpart is not None and _same_node(child, counterpart):
            _describe(child, counterpart, path, edits)
        else:
            entry, fresh = _set_entry(path, child)
            edits.append(entry)
            _describe(child, fresh, path, edits)
    edits.extend(
        {"op": "delete", "path": _join(prefix, name)}
        for name in reference_children
        if name not in deployed_names
    )
    kept_order = [name for name in reference_children if name in deployed_names]
    after_edits = kept_order + [name for name in deployed_names if name not in reference_children]
    if after_edits != deployed_names:
        edits.append({"op": "order", "path": prefix, "children": deployed_names})


def describe_structure(deployed: nn.Module, skeleton: nn.Module) -> list[dict[str, Any]]:
    """The edits that turn ``skeleton`` (a fresh dense model) into ``deployed``'s module tree."""
    edits: list[dict[str, Any]] = []
    if _same_node(deployed, skeleton):
        _describe(deployed, skeleton, "", edits)
    else:
        entry, fresh = _set_entry("", deployed)
        edits.append(entry)
        _describe(deployed, fresh, "", edits)
    return edits


def _split_path(path: Any) -> tuple[str, str]:
    """``(parent path, child name)`` of a dotted module path made of plain child names only."""
    if not isinstance(path, str) or (path and not all(_CHILD_NAME.fullmatch(part) for part in path.split("."))):
        raise ExportError(f"bad module path {path!r}: expected dot-separated child names")
    parent, _, name = path.rpartition(".")
    return parent, name


def _module_at(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ExportError(f"the model has no module at '{path}'") from None


def apply_structure(skeleton: nn.Module, edits: list[dict[str, Any]]) -> nn.Module:
    """Apply ``describe_structure``'s edits to ``skeleton`` (in place where possible); return the model."""
    if not isinstance(edits, list):
        raise ExportError(f"the structure must be a list of edits, got {type(edits).__name__}")
    model = skeleton
    for edit in edits:
        if not isinstance(edit, Mapping):
            raise ExportError(f"a structure edit must be a mapping, got {edit!r}")
        op, path = edit.get("op"), edit.get("path")
        parent_path, name = _split_path(path)
        if op == "set":
            module = _build_layer(edit.get("type"), edit.get("kwargs"))
            if path:
                parent = _module_at(model, parent_path)
                if name not in parent._modules and hasattr(parent, name):
                    raise ExportError(f"cannot set '{path}': {name!r} is an attribute, not a child module")
                setattr(parent, name, module)
            else:
                model = module
        elif op == "delete":
            parent = _module_at(model, parent_path)
            if name not in parent._modules:
                raise ExportError(f"cannot delete '{path}': there is no such child module")
            del parent._modules[name]
        elif op == "order":
            children = _module_at(model, path)._modules
            order = edit.get("children")
            if (
                not isinstance(order, list)
                or not all(isinstance(child, str) for child in order)
                or sorted(order) != sorted(children)
            ):
                raise ExportError(f"the order at '{path}' must list the children {list(children)}, got {order!r}")
            for child in order:
                children[child] = children.pop(child)
        else:
            raise ExportError(f"unknown structure edit {op!r} at '{path}'")
    return model


# ----------------------------------------------------------------------------- files
def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as independent contiguous CPU tensors.

    Cloning gives every entry its own storage, which safetensors requires (it refuses tensors that
    share memory, e.g. tied weights); strict loading fills tied parameters from either copy.
    """
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ExportError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; it cannot be exported"
            )
        tensors[key] = value.detach().cpu().contiguous().clone()
    return tensors


def _check_rebuild(
    architecture: Mapping[str, Any], edits: list[dict[str, Any]], state: Mapping[str, torch.Tensor]
) -> None:
    rebuilt = apply_structure(build_architecture(architecture), edits)
    expected = {key: tuple(t.shape) for key, t in state.items()}
    got = {key: tuple(t.shape) for key, t in rebuilt.state_dict().items()}
    if expected != got:
        differences = sorted(set(expected.items()) ^ set(got.items()))
        raise ExportError(
            f"the structure description does not rebuild the model; differing entries: {differences[:10]}"
        )


def export_model(
    model: nn.Module,
    run_dir: str | os.PathLike[str],
    config: Mapping[str, Any] | DictConfig,
    model_spec: Mapping[str, Any] | DictConfig,
) -> str:
    """Write ``<run_dir>/export/model.safetensors`` and ``model.json``; return ``export/model.json``.

    ``model_spec`` is the model's config node (``_target_`` naming a registered architecture, its
    arguments, ``input_shape`` and ``num_classes``) or an architecture description
    (``consparse.models.registry.describe_architecture``). A deployed model whose class is not the
    one the config builds (e.g. an implicit model converted from an MLP) carries its own spec in an
    ``export_spec`` attribute, which is used instead.
    """
    spec = _plain(getattr(model, "export_spec", None) or model_spec)
    try:
        architecture = describe_architecture(spec)
    except ConsparseError as exc:
        raise ExportError(f"cannot export the model: {exc}") from None
    edits = describe_structure(model, build_architecture(architecture))
    state = _state_tensors(model)
    _check_rebuild(architecture, edits, state)
    description = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "torch_version": torch.__version__,
        "state_file": STATE_FILE,
        **architecture,
        "structure": edits,
        # The config is informative: values JSON cannot hold (paths, ...) are kept as text.
        "config": json.loads(json.dumps(_plain(config), default=str)),
    }
    try:
        text = json.dumps(description, indent=2)
    except TypeError as exc:
        raise ExportError(f"a constructor_kwargs() holds a value JSON cannot store: {exc}") from exc
    export_dir = Path(run_dir) / EXPORT_DIR
    export_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(export_dir / STATE_FILE, safetensors_bytes(state, metadata={"format": "pt"}))
    write_atomically(export_dir / DESCRIPTION_FILE, text)
    return f"{EXPORT_DIR}/{DESCRIPTION_FILE}"


def _description_path(path: str | os.PathLike[str]) -> Path:
    candidate = Path(path)
    for option in (candidate, candidate / DESCRIPTION_FILE, candidate / EXPORT_DIR / DESCRIPTION_FILE):
        if option.is_file():
            return option
    raise ExportError(
        f"no exported model at {candidate}: expected {candidate / DESCRIPTION_FILE} "
        f"or {candidate / EXPORT_DIR / DESCRIPTION_FILE} (written by consparse.compress.export_model)"
    )


def _read_description(path: Path) -> dict[str, Any]:
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    if not isinstance(description, dict):
        raise ExportError(f"{path} must hold a JSON object, got {type(description).__name__}")
    if description.get("format") != EXPORT_FORMAT or description.get("version") != EXPORT_VERSION:
        raise ExportError(
            f"{path} is not a {EXPORT_FORMAT} v{EXPORT_VERSION} description "
            f"(format={description.get('format')!r}, version={description.get('version')!r}); "
            "exports of other versions are not read"
        )
    unknown = sorted(set(description) - set(_DESCRIPTION_KEYS))
    if unknown:
        raise ExportError(f"{path} holds unknown keys {unknown}; allowed: {', '.join(_DESCRIPTION_KEYS)}")
    if description.get("state_file") != STATE_FILE:
        raise ExportError(f"{path}: state_file must be {STATE_FILE!r} (beside it), got {description.get('state_file')!r}")
    return description


def load_exported(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported model (in eval mode) from a run dir, its ``export`` dir or ``model.json``.

    Reads only JSON and safetensors; builds only registered architectures and layer types.
    """
    description_path = _description_path(path)
    description = _read_description(description_path)
    state_path = description_path.with_name(STATE_FILE)
    try:
        model = apply_structure(build_architecture(description), description.get("structure", []))
        state = load_file(str(state_path))
    except (ConsparseError, SafetensorError, OSError) as exc:
        raise ExportError(f"cannot load the export {description_path}: {exc}") from None
    float_dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    if len(float_dtypes) == 1:
        # The skeleton is built in the default dtype; a float64 / half model is restored as it was.
        model.to(float_dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{state_path} does not fit the model {description_path} describes: {exc}") from None
    return model.eval()
