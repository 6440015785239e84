"""``ckpt_path=<file>``: start a new run from a Lightning checkpoint instead of from scratch.

The checkpoint restores what Lightning saves (weights, optimiser and scheduler state, the epoch
and step counters), so ``trainer.max_epochs`` counts on from the checkpoint's epoch. A run directory
that already holds its own ``checkpoints/last.ckpt`` (an interrupted or requeued run that started
from ``ckpt_path``) continues from that one: it is further along.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from consparse.checkpoint_io import load_checkpoint
from consparse.errors import ConfigError

KEY = "ckpt_path"


def start_checkpoint(cfg: DictConfig) -> Path | None:
    """The file ``ckpt_path`` names, checked to exist before anything is computed (None: not set)."""
    value = cfg.get(KEY)
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(
            KEY, f"no checkpoint file at {path}; give a Lightning .ckpt file, e.g. <run dir>/checkpoints/last.ckpt"
        )
    return path


def check_checkpoint_fits(path: Path, method: nn.Module) -> None:
    """Raise ConfigError unless the checkpoint's state_dict has ``method``'s keys and shapes.

    Lightning loads it strictly too, but finds a mismatch only once the trainer has started, with a
    long traceback.
    """
    try:
        checkpoint = load_checkpoint(path)
        saved = {key: tuple(tensor.shape) for key, tensor in checkpoint["state_dict"].items()}
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user error
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ConfigError(KEY, f"{path} is not a readable Lightning checkpoint ({reason})") from None
    expected = {key: tuple(tensor.shape) for key, tensor in method.state_dict().items()}
    differences = {
        "lacks": sorted(set(expected) - set(saved)),
        "has extra": sorted(set(saved) - set(expected)),
        "has other shapes for": sorted(key for key in set(expected) & set(saved) if expected[key] != saved[key]),
    }
    found = [f"{what} {keys[:3]}" for what, keys in differences.items() if keys]
    if found:
        raise ConfigError(
            KEY,
            f"{path} does not fit this method and model (it {'; '.join(found)}); "
            "start from a checkpoint of a run with the same method, model and dataset",
        )
