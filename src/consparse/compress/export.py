"""Export of a deployed model: weights (safetensors) plus a JSON description to rebuild it.

``<run_dir>/export/model.safetensors`` holds the state_dict; ``<run_dir>/export/model.json`` holds
the resolved run config, the model spec (a Hydra ``_target_`` node that builds the dense skeleton)
and the structure: the edits that turn a freshly built skeleton into the deployed model's module
tree. Loading never unpickles anything: it builds the skeleton, applies the edits and loads the
state_dict strictly.

Structure edits, applied in order (pre-order over the deployed model's module tree):

* ``{"op": "set", "path", "type", "kwargs"}``: put ``type(**kwargs)`` at ``path`` (a new or
  replaced module, e.g. a sliced Linear, a low-rank pair, an IndexSelect);
* ``{"op": "delete", "path"}``: remove a module the deployed model does not have;
* ``{"op": "order", "path", "children"}``: reorder a container's children.

A module is described by ``module.constructor_kwargs()`` when it defines it (the modules in
``consparse.compress.layers`` do), otherwise by reading the arguments of its ``__init__`` back from
same-named attributes (how ``nn.Linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``, activations, pooling
and containers store them; a parameter argument such as ``bias`` becomes ``bias is not None``).
Export checks that the description rebuilds a model with the same state_dict shapes, so an
unexportable module fails at export time, not when someone loads the run.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from consparse.config import instantiate_node
from consparse.errors import ConsparseError

EXPORT_DIR = "export"
STATE_FILE = "model.safetensors"
DESCRIPTION_FILE = "model.json"
EXPORT_FORMAT = "consparse-export"
EXPORT_VERSION = 1
# Constructor arguments that say where a module lives, not what it is.
_PLACEMENT_ARGUMENTS = ("device", "dtype")


class ExportError(ConsparseError):
    """A model cannot be exported or an export cannot be loaded; the message says which part."""


# ----------------------------------------------------------------------------- describing modules
def _type_path(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _import_type(path: str) -> type[nn.Module]:
    """The class at ``module.path.QualName`` (the longest importable prefix is the module)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute, None)
        if isinstance(target, type) and issubclass(target, nn.Module):
            return target
        break
    raise ExportError(f"cannot import the module class {path!r}")


def _is_json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    return False


def _json_value(value: Any) -> Any:
    return [_json_value(v) for v in value] if isinstance(value, (list, tuple)) else value


def constructor_kwargs(module: nn.Module) -> dict[str, Any]:
    """JSON keyword arguments that rebuild ``module``'s structure (not its values)."""
    own = getattr(module, "constructor_kwargs", None)
    if callable(own):
        return dict(own())
    kwargs: dict[str, Any] = {}
    signature = inspect.signature(type(module).__init__)
    for name, parameter in list(signature.parameters.items())[1:]:
        if (
            parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            or name in _PLACEMENT_ARGUMENTS
        ):
            continue
        if name in module._parameters:
            kwargs[name] = module._parameters[name] is not None
            continue
        value = getattr(module, name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and not callable(value) and _is_json_value(value):
            kwargs[name] = _json_value(value)
        elif parameter.default is inspect.Parameter.empty:
            raise ExportError(
                f"cannot describe a {_type_path(module)}: its constructor argument {name!r} is not stored "
                "as an attribute; give the class a constructor_kwargs() method returning its arguments"
            )
    return kwargs


def _build(type_path: str, kwargs: Mapping[str, Any]) -> nn.Module:
    return _import_type(type_path)(**kwargs)


def _own_shapes(module: nn.Module) -> dict[str, tuple[int, ...] | None]:
    tensors = {**module._parameters, **module._buffers}
    return {name: None if t is None else tuple(t.shape) for name, t in tensors.items()}


def _same_node(deployed: nn.Module, reference: nn.Module) -> bool:
    return type(deployed) is type(reference) and _own_shapes(deployed) == _own_shapes(reference)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _set_entry(path: str, module: nn.Module) -> tuple[dict[str, Any], nn.Module]:
    """The ``set`` edit describing ``module`` and a fresh module built from it (checked against it)."""
    entry = {"op": "set", "path": path, "type": _type_path(module), "kwargs": constructor_kwargs(module)}
    where = f"'{path or '<root>'}' ({entry['type']})"
    try:
        fresh = _build(entry["type"], entry["kwargs"])
    except (TypeError, ValueError) as exc:
        raise ExportError(f"cannot rebuild {where} from {entry['kwargs']}: {exc}") from exc
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


def apply_structure(skeleton: nn.Module, edits: list[dict[str, Any]]) -> nn.Module:
    """Apply ``describe_structure``'s edits to ``skeleton`` (in place where possible); return the model."""
    model = skeleton
    for edit in edits:
        path = edit["path"]
        parent_path, _, name = path.rpartition(".")
        if edit["op"] == "set":
            module = _build(edit["type"], edit["kwargs"])
            if path:
                setattr(model.get_submodule(parent_path), name, module)
            else:
                model = module
        elif edit["op"] == "delete":
            delattr(model.get_submodule(parent_path), name)
        elif edit["op"] == "order":
            children = model.get_submodule(path)._modules
            for child in edit["children"]:
                children[child] = children.pop(child)
        else:
            raise ExportError(f"unknown structure edit {edit['op']!r} at '{path}'")
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
    model_spec: Mapping[str, Any], edits: list[dict[str, Any]], state: Mapping[str, torch.Tensor]
) -> None:
    rebuilt = apply_structure(instantiate_node(dict(model_spec)), edits)
    expected = {key: tuple(t.shape) for key, t in state.items()}
    got = {key: tuple(t.shape) for key, t in rebuilt.state_dict().items()}
    if expected != got:
        differences = sorted(set(expected.items()) ^ set(got.items()))
        raise ExportError(
            f"the structure description does not rebuild the model; differing entries: {differences[:10]}"
        )


def _write_atomically(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


def export_model(
    model: nn.Module,
    run_dir: str | os.PathLike[str],
    config: Mapping[str, Any] | DictConfig,
    model_spec: Mapping[str, Any] | DictConfig,
) -> str:
    """Write ``<run_dir>/export/model.safetensors`` and ``model.json``; return ``export/model.json``.

    ``model_spec`` is the Hydra node (with ``_target_`` and every argument, ``input_shape`` and
    ``num_classes`` included) that builds the dense skeleton. A deployed model whose class is not
    the one the config builds (e.g. an implicit model converted from an MLP) carries its own spec
    in an ``export_spec`` attribute, which is used instead.
    """
    spec = dict(_plain(getattr(model, "export_spec", None) or model_spec))
    if "_target_" not in spec:
        raise ExportError(f"the model spec needs a '_target_' entry, got keys {sorted(spec)}")
    skeleton = instantiate_node(dict(spec))
    edits = describe_structure(model, skeleton)
    state = _state_tensors(model)
    _check_rebuild(spec, edits, state)
    description = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "torch_version": torch.__version__,
        "state_file": STATE_FILE,
        "model_spec": spec,
        "structure": edits,
        # The config is informative: values JSON cannot hold (paths, ...) are kept as text.
        "config": json.loads(json.dumps(_plain(config), default=str)),
    }
    try:
        text = json.dumps(description, indent=2)
    except TypeError as exc:
        raise ExportError(
            f"the model spec or a constructor_kwargs() holds a value JSON cannot store: {exc}"
        ) from exc
    export_dir = Path(run_dir) / EXPORT_DIR
    export_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        export_dir / STATE_FILE, lambda path: save_file(state, str(path), metadata={"format": "pt"})
    )
    _write_atomically(export_dir / DESCRIPTION_FILE, lambda path: path.write_text(text))
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


def load_exported(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported model (in eval mode) from a run dir, its ``export`` dir or ``model.json``.

    Reads only JSON and safetensors (no pickle).
    """
    description_path = _description_path(path)
    description = json.loads(description_path.read_text())
    if description.get("format") != EXPORT_FORMAT or description.get("version") != EXPORT_VERSION:
        raise ExportError(
            f"{description_path} is not a {EXPORT_FORMAT} v{EXPORT_VERSION} description "
            f"(format={description.get('format')!r}, version={description.get('version')!r})"
        )
    model = apply_structure(instantiate_node(description["model_spec"]), description["structure"])
    state = load_file(str(description_path.with_name(description["state_file"])))
    float_dtypes = {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    if len(float_dtypes) == 1:
        # The skeleton is built in the default dtype; a float64 / half model is restored as it was.
        model.to(float_dtypes.pop())
    model.load_state_dict(state, strict=True)
    return model.eval()
