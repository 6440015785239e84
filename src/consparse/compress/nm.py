"""N:M pruning without retraining, and the N:M record of an export (the masks beside the weights).

``nm_prune`` keeps the N largest ``|w|`` in every group of M consecutive input weights of every
sparsifiable weight (``consparse.nm_pattern`` says how groups are laid out); that is the one-shot
N:M magnitude pruning of NVIDIA's ASP (``m4n2_1d``), per layer, with no global ranking: the pattern
fixes the density of every layer at N/M.

An N:M export adds two files to ``export/`` (``consparse.compress.export``): ``nm.json`` (the
pattern and the pruned tensors) and ``nm_masks.safetensors`` (one boolean mask per weight, True =
kept). The masks keep the pattern even where a kept weight is exactly zero, which a fine-tuning or
a semi-structured conversion downstream needs. Both are data: ``load_nm_export`` reads JSON and
safetensors only and checks that every weight is zero outside its mask and that every mask is N:M.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from consparse.atomic_write import write_atomically
from consparse.compress.count import sparsifiable_weights
from consparse.compress.export import EXPORT_DIR, ExportError, load_exported
from consparse.compress.prune import apply_masks
from consparse.compress.semi_structured import SEMI_STRUCTURED, compare_semi_structured
from consparse.nm_pattern import NMPattern, parse_nm

NM_FILE = "nm.json"
MASK_FILE = "nm_masks.safetensors"
NM_FORMAT = "consparse-nm"
NM_VERSION = 1


def nm_masks(model: nn.Module, pattern: NMPattern) -> dict[str, torch.Tensor]:
    """``{name: keep mask}`` of every sparsifiable weight: the N largest ``|w|`` of each group."""
    return {name: pattern.keep_mask(weight.detach().abs()) for name, weight in sparsifiable_weights(model).items()}


def nm_prune(model: nn.Module, pattern: NMPattern) -> nn.Module:
    """A copy of ``model`` whose sparsifiable weights are N:M (the rest of the model untouched)."""
    pruned = copy.deepcopy(model)
    apply_masks(pruned, nm_masks(pruned, pattern))
    return pruned


def nm_violations(model: nn.Module, pattern: NMPattern) -> list[str]:
    """The sparsifiable weights of ``model`` with a group of more than N non-zeros."""
    return [name for name, weight in sparsifiable_weights(model).items() if not pattern.holds_for(weight)]


def nm_record(
    pattern: NMPattern | None,
    deployed: nn.Module,
    dense: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
) -> dict[str, Any]:
    """``{"nm": ...}`` for results.json of a run whose deployed model is N:M (``{}`` for other runs).

    The pattern, the weights that break it (none, unless a method is wrong) and, for 2:4 evaluated
    on a GPU, the semi-structured deployment against ``dense`` (``compare_semi_structured``).
    """
    if pattern is None:
        return {}
    if pattern != SEMI_STRUCTURED:
        gpu = {"measured": False, "reason": f"not measured: GPUs run 2:4, not {pattern}"}
    elif device.type != "cuda":
        gpu = {"measured": False, "reason": "not measured: the evaluation ran on the CPU (evaluation.device)"}
    else:
        gpu = compare_semi_structured(deployed, dense, input_shape)
    return {"nm": {"pattern": str(pattern), "violations": nm_violations(deployed, pattern), "semi_structured": gpu}}


# ----------------------------------------------------------------------------- export
def export_nm(model: nn.Module, run_dir: str | os.PathLike[str], pattern: NMPattern) -> str:
    """Write ``export/nm.json`` and ``export/nm_masks.safetensors`` for an N:M model; return ``export/nm.json``.

    The masks are the model's non-zeros; a weight that breaks the pattern is an ExportError.
    """
    broken = nm_violations(model, pattern)
    if broken:
        raise ExportError(f"cannot export as {pattern}: {', '.join(broken)} hold groups with more than {pattern.n} non-zeros")
    masks = {name: (weight.detach() != 0).cpu().contiguous() for name, weight in sparsifiable_weights(model).items()}
    description = {"format": NM_FORMAT, "version": NM_VERSION, "pattern": str(pattern), "groups": "input",
                   "mask_file": MASK_FILE, "weights": list(masks)}
    export_dir = Path(run_dir) / EXPORT_DIR
    export_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(export_dir / MASK_FILE, safetensors_bytes(masks, metadata={"pattern": str(pattern)}))
    write_atomically(export_dir / NM_FILE, json.dumps(description, indent=2))
    return f"{EXPORT_DIR}/{NM_FILE}"


def load_nm_export(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, torch.Tensor], NMPattern]:
    """``(model, masks, pattern)`` of an N:M export (a run dir or its ``export`` dir), checked.

    Every weight must be zero outside its mask and every mask must hold at most N entries per group.
    """
    export_dir = Path(path)
    if not (export_dir / NM_FILE).is_file():
        export_dir = export_dir / EXPORT_DIR
    description = _read_description(export_dir / NM_FILE)
    try:
        pattern = parse_nm(description.get("pattern"), f"{export_dir / NM_FILE}: pattern")
        masks = load_file(str(export_dir / MASK_FILE))
    except (ValueError, SafetensorError, OSError) as exc:
        raise ExportError(f"cannot load the N:M export {export_dir}: {exc}") from None
    model = load_exported(export_dir)
    _check_masks(model, masks, pattern, export_dir)
    return model, masks, pattern


def exported_pattern(export_dir: str | os.PathLike[str]) -> NMPattern | None:
    """The pattern an export directory's ``nm.json`` records (None for an export without one)."""
    path = Path(export_dir) / NM_FILE
    if not path.is_file():
        return None
    try:
        return parse_nm(_read_description(path).get("pattern"), f"{path}: pattern")
    except ValueError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None


def _read_description(path: Path) -> dict[str, Any]:
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    if not isinstance(description, dict) or description.get("format") != NM_FORMAT:
        raise ExportError(f"{path} is not a {NM_FORMAT} description")
    if description.get("version") != NM_VERSION or description.get("mask_file") != MASK_FILE:
        raise ExportError(f"{path}: expected version {NM_VERSION} with mask_file {MASK_FILE!r}")
    return description


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor], pattern: NMPattern, where: Path) -> None:
    weights = sparsifiable_weights(model)
    if set(masks) != set(weights):
        raise ExportError(f"{where / MASK_FILE} names {sorted(masks)}, the model's weights are {sorted(weights)}")
    for name, mask in masks.items():
        weight = weights[name]
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise ExportError(f"{where / MASK_FILE}: the mask of {name} must be boolean of shape {tuple(weight.shape)}")
        if not pattern.holds_for(mask):
            raise ExportError(f"{where / MASK_FILE}: the mask of {name} is not {pattern}")
        if bool((weight.detach()[~mask] != 0).any()):
            raise ExportError(f"{where}: {name} has non-zeros outside its mask")
