"""Architectures, chosen by the ``model`` config group; ``build_model`` sizes them from the dataset."""

from consparse.models.registry import build_model

__all__ = ["build_model"]
