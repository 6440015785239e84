"""Constraint sets for the Frank-Wolfe optimiser: one class per set, each with ``lmo``, ``norm``,
``radius``, ``diameter`` and ``make_feasible`` (the seam is described in ``base``)."""

from consparse.optim.constraints.base import ConstraintSet, resolve_k
from consparse.optim.constraints.group import GroupKSupportNormBall
from consparse.optim.constraints.init_norm import expected_init_norms
from consparse.optim.constraints.ksparse import KSparsePolytope
from consparse.optim.constraints.ksupport import KSupportNormBall, ksupport_norm_rows
from consparse.optim.constraints.lp import LpBall
from consparse.optim.constraints.model_constraints import (
    ConstrainedGroup,
    ConstraintSpec,
    build_model_constraints,
    classify_parameters,
)
from consparse.optim.constraints.nm import NMSparsePolytope
from consparse.optim.constraints.rowwise import RowwiseKSparsePolytope, RowwiseKSupportNormBall, RowwiseL1Ball
from consparse.optim.constraints.spectral import (
    NuclearNormBall,
    SpectralKSupportNormBall,
    top_right_singular_basis,
)

__all__ = [
    "ConstrainedGroup",
    "ConstraintSet",
    "ConstraintSpec",
    "GroupKSupportNormBall",
    "KSparsePolytope",
    "KSupportNormBall",
    "LpBall",
    "NMSparsePolytope",
    "NuclearNormBall",
    "RowwiseKSparsePolytope",
    "RowwiseKSupportNormBall",
    "RowwiseL1Ball",
    "SpectralKSupportNormBall",
    "build_model_constraints",
    "classify_parameters",
    "expected_init_norms",
    "ksupport_norm_rows",
    "resolve_k",
    "top_right_singular_basis",
]
