"""The machinery of implicit models ``X = relu(A X + B u)``, ``y = C X + D u``.

The model itself is ``consparse.models.implicit``. Here: ``solvers`` (fixed-point iteration,
Anderson), ``function`` (the implicit backward), ``projection`` (row-wise L1 balls), ``convert``
(exact Linear/ReLU -> (A, B, C, D)), ``structure`` (A's support graph: which states to evaluate in
which order, for the deployed form ``consparse.models.implicit_deployed``).
"""
