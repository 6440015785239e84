"""Reading checkpoints without running code: ``torch.load(weights_only=True)``, always.

A checkpoint is a pickle, and an unrestricted unpickler calls whatever a file names. Torch's
weights-only unpickler rebuilds tensors, containers and primitive values only, plus the types
listed in ``SAFE_GLOBALS``; anything else is refused before it is called. ``weights_only=True`` is
passed explicitly because torch's default can be switched back to full unpickling by an
environment variable (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``); an explicit value cannot be.

Lightning reads checkpoints through its ``CheckpointIO`` plugin (resume via ``ckpt_path``), so the
Trainer gets ``SafeCheckpointIO``; other readers of user-given checkpoint files call
``load_checkpoint``.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from consparse.errors import ConsparseError

# numpy's array-unpickling helper (numpy 2 moved it from numpy.core to numpy._core).
try:
    from numpy._core.multiarray import _reconstruct as numpy_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as numpy_reconstruct

# Beyond torch's defaults: numpy arrays of plain dtypes, which random-generator states hold
# (``np.random.get_state()``, Lightning's ``_collect_rng_states``). Rebuilding an array calls no
# code the file chooses: the dtype and array constructors only.
SAFE_GLOBALS: tuple[Any, ...] = (
    numpy_reconstruct,
    np.ndarray,
    np.dtype,
    *(type(np.dtype(kind)) for kind in ("bool", "uint8", "uint32", "int32", "int64", "float32", "float64")),
)


class CheckpointError(ConsparseError):
    """A checkpoint file cannot be read safely; the message names the file."""


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with ``SAFE_GLOBALS`` admitted; CheckpointError otherwise.

    A file that names any other callable or class is refused before anything in it runs.
    """
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} was refused: it holds objects a checkpoint may not hold ({_reason(error)}); nothing in it "
            "was run. Load only checkpoints written by consparse"
        ) from None
    except Exception as error:  # noqa: BLE001 - damaged bytes raise anything (KeyError, struct.error, ...)
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: {_reason(error)})") from None


def _reason(error: BaseException) -> str:
    """The sentence of torch's long weights-only message that says what was refused."""
    text = str(error)
    refused = re.search(r"(Unsupported|Can only build)[^\n]*?(?=\. |\.?$|\n)", text, re.MULTILINE)
    if refused:
        return refused.group(0)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with loading through ``load_checkpoint``; saving is Lightning's own."""

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load ``path`` weights-only whatever ``weights_only`` Lightning passes (its default is None)."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint(path, map_location=map_location)
