"""The radius ``kappa`` that meets a density target: an outer search over ``kappa``.

The density of the refitted model grows with ``kappa`` (a larger ball admits more nonzeros), not
strictly but closely enough for a bracketing search. Density against ``kappa`` is close to a power
law, so the next ``kappa`` interpolates the bracket in log-log space (regula falsi, kept at least
5 % of the bracket away from its ends so that it cannot stall); before a bracket exists it
extrapolates with the slope seen so far. The search keeps the feasible candidate
(density <= target) closest to the target and stops once one is within ``tolerance * target``.
Each evaluation warm-starts from the previous one's solutions (the row solver keeps its paths).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from consparse.validation import check_int, check_range

Payload = TypeVar("Payload")
# kappa stays inside (KAPPA_MIN, KAPPA_MAX): well-posedness needs kappa < 1.
KAPPA_MIN = 1e-6
KAPPA_MAX = 0.999


@dataclass(frozen=True)
class DensitySearchSettings:
    """Attributes: ``tolerance`` (relative to the target), ``max_steps`` (evaluations)."""

    tolerance: float = 0.02
    max_steps: int = 12

    def validate(self, prefix: str = "") -> None:
        check_range(f"{prefix}tolerance", self.tolerance, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_int(f"{prefix}max_steps", self.max_steps, 1)


@dataclass
class DensitySearchResult(Generic[Payload]):
    """The chosen ``kappa``, its density and payload, and every ``(kappa, density)`` evaluated."""

    kappa: float
    density: float
    payload: Payload
    met: bool
    history: list[tuple[float, float]] = field(default_factory=list)


def search_kappa(
    evaluate: Callable[[float], tuple[float, Payload]],
    target: float,
    start: float,
    settings: DensitySearchSettings = DensitySearchSettings(),
) -> DensitySearchResult[Payload]:
    """Find ``kappa`` with ``target (1 - tolerance) <= density(kappa) <= target``, from ``start``.

    ``evaluate(kappa) -> (density, payload)``. Without such a ``kappa`` within ``max_steps``, the
    feasible candidate closest to the target is returned (or, if none is feasible, the sparsest).
    """
    history: list[tuple[float, float]] = []
    best: tuple[float, float, Payload] | None = None  # feasible, closest to the target
    sparsest: tuple[float, float, Payload] | None = None
    below: tuple[float, float] | None = None  # (kappa, density) with density <= target
    above: tuple[float, float] | None = None
    kappa = min(max(start, KAPPA_MIN), KAPPA_MAX)
    for _ in range(settings.max_steps):
        density, payload = evaluate(kappa)
        history.append((kappa, density))
        if sparsest is None or density < sparsest[1]:
            sparsest = (kappa, density, payload)
        if density <= target:
            if best is None or density > best[1]:
                best = (kappa, density, payload)
            if density >= target * (1 - settings.tolerance):
                break
            below = (kappa, density)
        else:
            above = (kappa, density)
        kappa = _next_kappa(below, above, target, history)
        if kappa is None:
            break
    chosen = best if best is not None else sparsest
    assert chosen is not None
    return DensitySearchResult(chosen[0], chosen[1], chosen[2], best is not None and chosen[1] >= target * (1 - settings.tolerance), history)


def _next_kappa(
    below: tuple[float, float] | None,
    above: tuple[float, float] | None,
    target: float,
    history: list[tuple[float, float]],
) -> float | None:
    log_target = math.log(target)
    if below is not None and above is not None:
        (k_lo, d_lo), (k_hi, d_hi) = below, above
        if k_hi / k_lo <= 1 + 1e-6:
            return None
        lo, hi = math.log(k_lo), math.log(k_hi)
        if d_lo <= 0:
            return math.exp(0.5 * (lo + hi))
        f_lo, f_hi = math.log(d_lo) - log_target, math.log(d_hi) - log_target
        guess = lo - f_lo * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        # Stay away from the ends, where the interpolation stalls.
        guess = min(max(guess, lo + 0.05 * (hi - lo)), hi - 0.05 * (hi - lo))
        return math.exp(guess)
    kappa, density = history[-1]
    slope = 1.0
    if len(history) >= 2:
        (k0, d0), (k1, d1) = history[-2], history[-1]
        if d0 > 0 and d1 > 0 and k0 != k1 and d0 != d1:
            slope = min(max((math.log(d1) - math.log(d0)) / (math.log(k1) - math.log(k0)), 0.1), 10.0)
    if density <= 0:
        step = math.log(4.0)
    else:
        # Extrapolate, at most a factor 8 per step, at least a factor 1.2 towards the target.
        step = (log_target - math.log(density)) / slope
        step = math.copysign(min(max(abs(step), math.log(1.2)), math.log(8.0)), step)
    guess = min(max(kappa * math.exp(step), KAPPA_MIN), KAPPA_MAX)
    if guess == kappa:
        return None
    return guess
