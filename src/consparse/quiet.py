"""Silence third-party messages that say nothing about a consparse run."""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_known_noise() -> None:
    """Drop the CUDA-toolkit probe, Lightning's advertising tip and a pytree deprecation on CPU runs."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropMessages("litlogger", "💡 Tip"))
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropMessages("litlogger", "💡 Tip"))
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Resuming in the run directory is intended; Lightning warns that the checkpoint directory is not empty.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty.*")
    # ckpt_path= starts a run from another run's checkpoint, whose directory is naturally elsewhere.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from .*")
