"""A batched constrained-LASSO library: many rows sharing one design.

``problem`` (the statistics, objective, gradient and optimality check), ``solution`` (the one
solution type every solver returns), ``path`` (exact batched penalised LASSO paths, built from
``support``: the support and its inverse, ``screening``: the tracked correlations, and ``knots``:
the distances to the next knot), ``search`` (the constrained LASSO ``||w||_1 <= kappa`` by a search
on the path), ``active_set`` (the active-set solver), ``solvers`` (the solvers by name and their
settings from one config block), ``statistics`` (streamed Gram matrices), ``debias`` (least
squares on a fixed support).
"""
