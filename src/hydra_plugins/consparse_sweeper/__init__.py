"""consparse's Hydra plugins: the block sweeper (``override /hydra/sweeper: blocks``).

Hydra finds plugins only in the ``hydra_plugins`` namespace package; the planning logic lives in
``consparse.sweeper``.
"""
