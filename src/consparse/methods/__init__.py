"""Methods: one LightningModule per method, chosen by the ``method`` config group."""

from consparse.methods.base import Deployment, SparseMethod
from consparse.methods.registry import build_method

__all__ = ["Deployment", "SparseMethod", "build_method"]
