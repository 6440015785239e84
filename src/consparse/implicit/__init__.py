"""Implicit models and their state-matching sparsification.

``model`` (the implicit model ``X = relu(A X + B u)``, ``y = C X + D u``), ``solvers`` (fixed-point
iteration, Anderson), ``function`` (implicit backward), ``projection`` (row-wise L1 balls),
``convert`` (exact Linear/ReLU -> (A, B, C, D)); ``lasso`` (exact batched LASSO paths), ``bisection``
(the constrained LASSO by a search on the penalty), ``rows`` (rows in chunks, split across DDP
ranks), ``statistics`` (streamed Gram matrices), ``matching`` / ``state_matching`` / ``layerwise``
(the formulations), ``readout`` (the read-out refit), ``kappa_search`` (radius for a density target),
``reference`` (the row-by-row scikit-learn baseline).
"""
