"""The hard-concrete gate of Louizos, Welling & Kingma (2018), as used by Gallego-Posada et al. (2022).

A gate ``z`` in [0, 1] is a stretched and clipped binary-concrete sample::

    u ~ U(EPS, 1 - EPS)
    s = sigmoid((log u - log(1 - u) + log_alpha) / BETA)
    z = clamp(s * (ZETA - GAMMA) + GAMMA, 0, 1)

One sample per forward pass is shared by the whole minibatch (as in the authors' code). At test
time the gate is deterministic (the median of ``s`` stretched and clipped), and it may be
fractional: it is folded into the weights when a model is purged. With BETA = 2/3 the test gate is
exactly 0 for ``log_alpha <= -1.5986`` and exactly 1 for ``log_alpha >= +1.5986``.

The probability that a gate is non-zero, the quantity expected-L0 bookkeeping sums, has the closed
form ``P(z != 0) = sigmoid(log_alpha - BETA * log(-GAMMA / ZETA))``.

Gates, their probabilities and the noise are computed in full precision even inside ``torch.autocast``
(``consparse.precision``): in bfloat16 a probability near 1 rounds to 1 and a log-odds of 8 bits
moves the expected density the constraint holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from consparse.precision import full_precision

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
EPS = 1e-6
# log_alpha is clamped to [log 1e-2, log 1e2] after every optimiser step (authors' code).
LOG_ALPHA_MIN = math.log(1e-2)
LOG_ALPHA_MAX = math.log(1e2)
# P(z != 0) = sigmoid(log_alpha + ACTIVE_SHIFT); also the |log_alpha| where the test gate saturates.
ACTIVE_SHIFT = BETA * math.log(-ZETA / GAMMA)
# Spread of log_alpha around its initial value (authors' code: N(log((1-d)/d), 0.01^2)).
INIT_STD = 0.01


def log_alpha_for_droprate(droprate: float) -> float:
    """The ``log_alpha`` whose deterministic gate drops with odds ``droprate : 1 - droprate``."""
    if not 0.0 < droprate < 1.0:
        raise ValueError(f"droprate must be in (0, 1), got {droprate}")
    return math.log((1.0 - droprate) / droprate)


@full_precision
def sample_gate(log_alpha: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One differentiable training sample of the gates (reparameterised through ``log_alpha``).

    ``uniform``: the noise in [0, 1), shaped like ``log_alpha``; None draws it from torch's global stream.
    """
    if uniform is None:
        uniform = torch.rand_like(log_alpha)
    u = uniform * (1.0 - 2.0 * EPS) + EPS
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


@full_precision
def deterministic_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """The deterministic test-time gate (possibly fractional)."""
    return torch.clamp(torch.sigmoid(log_alpha / BETA) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


@full_precision
def prob_active(log_alpha: torch.Tensor) -> torch.Tensor:
    """``P(z != 0)`` of each gate, differentiable in ``log_alpha``."""
    return torch.sigmoid(log_alpha + ACTIVE_SHIFT)


class HardConcreteGate(nn.Module):
    """A tensor of hard-concrete gates with one learnable ``log_alpha`` each.

    Calling the module returns a training sample in train mode and the test gate in eval mode, and
    keeps it in ``current`` so that a module applying the same gate later in the forward pass (the
    BatchNorm after a gated convolution) uses the same sample. A training sample uses the uniform
    noise in ``noise`` when it is set (``consparse.gates.noise.seeded_gate_noise``), else draws it.

    Args:
        shape: shape of the gate tensor (one entry per gated group).
        droprate_init: initial drop rate ``d`` in (0, 1); ``log_alpha ~ N(log((1-d)/d), 0.01^2)``.
    """

    def __init__(
        self, shape: int | Sequence[int], droprate_init: float = 0.5, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.droprate_init = float(droprate_init)
        self.log_alpha = nn.Parameter(torch.empty(self.shape, device=device))
        self.current: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.log_alpha.normal_(log_alpha_for_droprate(self.droprate_init), INIT_STD)

    def forward(self) -> torch.Tensor:
        z = sample_gate(self.log_alpha, self.noise) if self.training else deterministic_gate(self.log_alpha)
        self.current = z
        return z

    def __getstate__(self) -> dict:
        # ``current`` is part of an autograd graph (not copyable) and only meaningful within one forward pass.
        state = self.__dict__.copy()
        state["current"] = None
        return state

    def test_gate(self) -> torch.Tensor:
        return deterministic_gate(self.log_alpha)

    def prob_active(self) -> torch.Tensor:
        return prob_active(self.log_alpha)

    def clamp_(self) -> None:
        """Keep ``log_alpha`` in [log 1e-2, log 1e2] (called after every optimiser step)."""
        with torch.no_grad():
            self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, droprate_init={self.droprate_init}"
