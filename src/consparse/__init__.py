"""consparse: configuration-driven training of sparse neural networks with constrained optimisation."""

__version__ = "0.1.0"
