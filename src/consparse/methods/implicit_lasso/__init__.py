"""``method=implicit_lasso`` and its own pipeline: a trained network converted to an implicit model,
its rows refitted by the constrained LASSO of ``consparse.lasso``.

``method`` (the LightningModule), ``matching`` / ``state_matching`` / ``layerwise`` (the
formulations: the whole implicit model, or layer by layer), ``refit`` (rows in chunks, split across
DDP ranks), ``readout`` (the read-out refit), ``kappa_search`` (the radius for a density target).
"""

from consparse.methods.implicit_lasso.method import ImplicitLassoMethod, load_teacher

__all__ = ["ImplicitLassoMethod", "load_teacher"]
