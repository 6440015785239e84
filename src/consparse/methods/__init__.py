"""Methods: one LightningModule per method, chosen by the ``method`` config group."""

from consparse.methods.base import SparseMethod
from consparse.methods.registry import build_method

__all__ = ["SparseMethod", "build_method"]
