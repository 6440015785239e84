"""Export of a deployed model: weights (safetensors) plus a JSON description to rebuild it.

``<run_dir>/export/model.safetensors`` holds the state_dict; ``<run_dir>/export/model.json`` holds
the resolved run config (informative, never read back), the architecture that builds the dense
skeleton (a name registered in ``consparse.models.registry.ARCHITECTURES``, its arguments,
``input_shape`` and ``num_classes``) and the structure: the edits that turn a freshly built
skeleton into the deployed model's module tree. An export is data, never code: loading imports
nothing the file names, calls only registered builders and the layer types of ``export_structure.LAYER_TYPES``
with checked JSON arguments, and never unpickles. It builds the skeleton, applies the edits and
loads the state_dict strictly; any malformed or unknown entry is an ExportError naming the file.

The structure edits are ``consparse.compress.export_structure``.
"""

from __future__ import annotations

import json
import os
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
from consparse.compress.export_structure import ExportError, apply_structure, describe_structure
from consparse.errors import ConsparseError
from consparse.models.registry import build_architecture, describe_architecture

EXPORT_DIR = "export"
STATE_FILE = "model.safetensors"
DESCRIPTION_FILE = "model.json"
EXPORT_FORMAT = "consparse-export"
# Version 1 named Python callables (``_target_``, class paths); it is no longer read.
EXPORT_VERSION = 2
_DESCRIPTION_KEYS = (
    "format", "version", "torch_version", "state_file", "architecture", "arguments", "input_shape",
    "num_classes", "structure", "config",
)


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
