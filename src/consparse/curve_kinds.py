"""The kinds of compression-curve points: one definition for the config check, the curve and results.json.

A grid (``evaluation.compression_grid``) maps a kind to what to try: fractions removed for
``unstructured``, ``filter`` and ``lowrank``; patterns ``"N:M"`` for ``nm`` (its points' ``amount``
is the fraction removed, ``1 - N/M``, and ``pattern`` says which).
"""

CURVE_KINDS = ("unstructured", "filter", "lowrank", "nm")
# Kinds whose grid lists N:M patterns rather than fractions removed.
PATTERN_KINDS = ("nm",)
