"""A batched constrained-LASSO library: many rows sharing one design.

``path`` (the problem, its Gram statistics and KKT check, and exact batched LASSO paths),
``search`` (the constrained LASSO ``||w||_1 <= kappa`` by a search on the penalty, and its solution
type), ``active_set`` (the active-set solver), ``statistics`` (streamed Gram matrices), ``debias``
(least squares on a fixed support).
"""
