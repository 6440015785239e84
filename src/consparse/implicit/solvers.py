"""Batched fixed-point solvers (Picard and Anderson) with a per-sample, scale-aware stopping rule.

Used for the implicit model's forward ``x = relu(A x + B u)`` and for its adjoint ``v = d * (v A + g)``.
Every sample (row of the batch) is judged on its own: it has converged once

    ||x_next - x||_inf <= atol + rtol * ||x_next||_inf

so the rule neither depends on the batch size (the public code uses a matrix norm over the batch)
nor on the scale of the states (a rescaled implicit model has states of order 1e-3). The loop stops
when every sample has converged or after ``max_iter`` applications of the map.

Solves run in full precision inside ``torch.autocast`` (``consparse.precision``): a bfloat16 map
cannot get below a relative residual of ~4e-3, far above any useful ``rtol``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from consparse.precision import full_precision
from consparse.validation import check_int, check_range

StepFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FixedPointSettings:
    """How a fixed point is solved.

    Attributes:
        max_iter: cap on applications of the map.
        rtol: relative part of the per-sample stopping rule.
        atol: absolute part of the per-sample stopping rule.
        anderson_memory: 0 for plain Picard iteration, else the number of past iterates Anderson
            acceleration combines (type II, Walker & Ni 2011).
        anderson_damping: mixing weight of the map's values in an Anderson step, in (0, 1].
    """

    max_iter: int = 300
    rtol: float = 1e-5
    atol: float = 1e-8
    anderson_memory: int = 0
    anderson_damping: float = 1.0

    def validate(self, prefix: str = "") -> None:
        """Raise ParameterError naming ``<prefix><field>`` (relative to the object these settings configure)."""
        check_int(f"{prefix}max_iter", self.max_iter, 1)
        check_range(f"{prefix}rtol", self.rtol, 0.0)
        check_range(f"{prefix}atol", self.atol, 0.0)
        if self.rtol == 0 and self.atol == 0:
            check_range(f"{prefix}atol", self.atol, 0.0, low_inclusive=False)
        check_int(f"{prefix}anderson_memory", self.anderson_memory, 0, 50)
        check_range(f"{prefix}anderson_damping", self.anderson_damping, 0.0, 1.0, low_inclusive=False)


@dataclass(frozen=True)
class FixedPointStats:
    """What one solve did.

    Attributes:
        iterations: applications of the map (the loop ran this many times).
        mean_iterations: mean over samples of the iteration at which each sample met the rule
            (``iterations`` for a sample that never did).
        max_residual: largest ``||x_next - x||_inf`` over samples at the returned iterate.
        max_relative_residual: largest ratio of that residual to the sample's tolerance
            ``atol + rtol * ||x||_inf``; at most 1 when every sample converged.
        converged: every sample met the rule.
        samples: batch size.
    """

    iterations: int
    mean_iterations: float
    max_residual: float
    max_relative_residual: float
    converged: bool
    samples: int

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "iterations": self.iterations,
            "mean_iterations": self.mean_iterations,
            "max_residual": self.max_residual,
            "max_relative_residual": self.max_relative_residual,
            "converged": self.converged,
            "samples": self.samples,
        }


class _Progress:
    """Per-sample bookkeeping of the stopping rule."""

    def __init__(self, samples: int, settings: FixedPointSettings, device: torch.device) -> None:
        self.settings = settings
        self.met_at = torch.full((samples,), -1, dtype=torch.long, device=device)
        self.residual = torch.full((samples,), float("inf"), device=device)
        self.ratio = torch.full((samples,), float("inf"), device=device)

    def update(self, iteration: int, previous: torch.Tensor, current: torch.Tensor) -> bool:
        """Record the step ``previous -> current``; True once every sample has met the rule."""
        step = (current - previous).abs().amax(dim=1) if current.shape[1] else current.new_zeros(current.shape[0])
        scale = current.abs().amax(dim=1) if current.shape[1] else current.new_zeros(current.shape[0])
        tolerance = self.settings.atol + self.settings.rtol * scale
        # A non-finite step never counts as converged (nan <= tol is False as well).
        self.residual = step
        ratio = torch.where(step == 0, torch.zeros_like(step), step / tolerance.clamp_min(torch.finfo(step.dtype).tiny))
        self.ratio = torch.nan_to_num(ratio, nan=float("inf"))
        met = step <= tolerance
        self.met_at = torch.where((self.met_at < 0) & met, torch.full_like(self.met_at, iteration), self.met_at)
        return bool(met.all())

    def stats(self, iterations: int) -> FixedPointStats:
        met_at = torch.where(self.met_at < 0, torch.full_like(self.met_at, iterations), self.met_at)
        samples = int(met_at.numel())
        finite_residual = torch.nan_to_num(self.residual, nan=float("inf"))
        return FixedPointStats(
            iterations=iterations,
            mean_iterations=float(met_at.float().mean()) if samples else 0.0,
            max_residual=float(finite_residual.max()) if samples else 0.0,
            max_relative_residual=float(self.ratio.max()) if samples else 0.0,
            converged=bool((self.met_at >= 0).all()),
            samples=samples,
        )


@full_precision
def solve_fixed_point(step: StepFunction, x0: torch.Tensor, settings: FixedPointSettings) -> tuple[torch.Tensor, FixedPointStats]:
    """Solve ``x = step(x)`` for a batch ``x0`` of shape ``(samples, n)``; returns ``(x, stats)``.

    The returned ``x`` is always a value of ``step`` (the last one computed), so for the implicit
    forward it is exactly ``relu(...)`` of something, i.e. non-negative.
    """
    if x0.dim() != 2:
        raise ValueError(f"fixed-point iterates are (samples, n) matrices, got shape {tuple(x0.shape)}")
    if x0.is_meta:
        # Shapes only (a model built on the meta device): one application, nothing to judge.
        return step(x0), FixedPointStats(0, 0.0, 0.0, 0.0, True, x0.shape[0])
    if settings.anderson_memory > 0:
        return _anderson(step, x0, settings)
    return _picard(step, x0, settings)


def _picard(step: StepFunction, x0: torch.Tensor, settings: FixedPointSettings) -> tuple[torch.Tensor, FixedPointStats]:
    progress = _Progress(x0.shape[0], settings, x0.device)
    x = x0
    iterations = 0
    for iterations in range(1, settings.max_iter + 1):
        x_next = step(x)
        done = progress.update(iterations, x, x_next)
        x = x_next
        if done:
            break
    return x, progress.stats(iterations)


def _anderson(step: StepFunction, x0: torch.Tensor, settings: FixedPointSettings) -> tuple[torch.Tensor, FixedPointStats]:
    """Type-II Anderson acceleration, one small least-squares problem per sample.

    Mixing weights alpha (summing to one) minimise ``||sum_i alpha_i (f(x_i) - x_i)||`` over the last
    ``memory`` iterates; the regulariser is relative to the residuals' scale so that rescaled states
    (tiny numbers) are treated like unit-scale ones.
    """
    samples, n = x0.shape
    memory = settings.anderson_memory
    beta = settings.anderson_damping
    progress = _Progress(samples, settings, x0.device)
    past_x = x0.new_zeros(samples, memory, n)
    past_f = x0.new_zeros(samples, memory, n)
    x = x0
    f = step(x)
    iterations = 1
    done = progress.update(iterations, x, f)
    past_x[:, 0], past_f[:, 0] = x, f
    x = f
    while not done and iterations < settings.max_iter:
        f = step(x)
        iterations += 1
        done = progress.update(iterations, x, f)
        slot = (iterations - 1) % memory
        past_x[:, slot], past_f[:, slot] = x, f
        if done:
            x = f
            break
        filled = min(iterations, memory)
        residuals = (past_f[:, :filled] - past_x[:, :filled])
        gram = residuals @ residuals.transpose(1, 2)
        scale = gram.diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        # Relative 1e-10, but never below the dtype's resolution: in float32 a smaller ridge vanishes in
        # rounding and a rank-deficient history (a sample that has converged) leaves the system singular.
        ridge = max(1e-10, 16 * torch.finfo(x.dtype).eps)
        regularised = gram + ridge * scale[:, None, None] * torch.eye(filled, dtype=x.dtype, device=x.device)
        # Minimise a' G a subject to sum(a) = 1: a = G^{-1} 1 / (1' G^{-1} 1).
        solution = torch.linalg.solve(regularised, torch.ones(samples, filled, 1, dtype=x.dtype, device=x.device))[..., 0]
        alpha = solution / solution.sum(dim=1, keepdim=True)
        alpha = torch.nan_to_num(alpha)
        mixed_f = (alpha[:, :, None] * past_f[:, :filled]).sum(dim=1)
        mixed_x = (alpha[:, :, None] * past_x[:, :filled]).sum(dim=1)
        x = beta * mixed_f + (1.0 - beta) * mixed_x
    if not done:
        x = f
    return x, progress.stats(iterations)
