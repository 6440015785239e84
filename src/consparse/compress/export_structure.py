"""The structure of an exported model: the edits that turn a freshly built skeleton into the deployed model.

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
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from consparse.compress.layers import ChannelScatter, IndexSelect, LowRankConv2d, LowRankLinear
from consparse.errors import ConsparseError
from consparse.models.registry import is_json_value

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

class ExportError(ConsparseError):
    """A model cannot be exported or an export cannot be loaded; the message says which part."""


# ----------------------------------------------------------------------------- describing modules
def _layer_name(module: nn.Module) -> str:
    name = type(module).__name__
    if LAYER_TYPES.get(name) is not type(module):
        cls = type(module)
        raise ExportError(
            f"cannot export a {cls.__module__}.{cls.__qualname__}: it is not a layer type an export may "
            "build (consparse.compress.export_structure.LAYER_TYPES)"
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
