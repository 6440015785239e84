"""Wall-clock seconds of the phases of a run (setup, fit, test accuracy, curve, latency, export, ...).

They go into ``results.json`` as ``phase_seconds`` and into the printed summary, so that a run says
where its time went; ``EVALUATION_PHASES`` are what the evaluation after training costs.
"""

from __future__ import annotations

import time

# The phases after training that measure the deployed model (``evaluation`` in the summary).
EVALUATION_PHASES = ("test_accuracy", "val_accuracy", "model_stats", "latency", "curve", "export", "method_metrics")


class PhaseTimer:
    """Seconds per named phase, measured as laps: ``lap(name)`` books the time since the previous lap
    (or since the timer was made) to ``name``. Laps cover a run without gaps, so the phases add up to
    its wall time; a name booked twice accumulates."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        """Book the seconds since the previous lap to ``name``; returns them."""
        now = time.perf_counter()
        elapsed = now - self._last
        self._last = now
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        return elapsed

    def as_dict(self) -> dict[str, float]:
        """``{phase: seconds}`` rounded to milliseconds, in the order the phases first ran."""
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


def evaluation_seconds(phase_seconds: dict[str, float]) -> float:
    """Seconds the run spent evaluating the deployed model after training."""
    return sum(seconds for name, seconds in phase_seconds.items() if name in EVALUATION_PHASES)
