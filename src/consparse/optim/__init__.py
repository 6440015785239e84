"""Optimisation wing: the Frank-Wolfe optimiser, its constraint sets (``constraints``) and the
Lagrange multipliers of constrained methods (``lagrangian``).

The optimiser knows nothing of models; ``constraints.build_model_constraints`` turns a model and a
``ConstraintSpec`` into its param groups.
"""

from consparse.optim.frank_wolfe import FrankWolfe

__all__ = ["FrankWolfe"]
