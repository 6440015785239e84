"""Closing the gates least likely to be open until a deployed density is at most its target."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from consparse.gates.hard_concrete import LOG_ALPHA_MIN, HardConcreteGate


@torch.no_grad()
def close_weakest_gates(gates: Sequence[HardConcreteGate], deployed_density: Callable[[], float],
                        target: float) -> int:
    """Close the fewest open test gates, lowest ``log_alpha`` first, so that ``deployed_density() <= target``.

    A gate is closed by setting its ``log_alpha`` to the clamp's lower end, where its test gate is 0.
    Closing gates never raises a purged model's density, so the count is found by bisection. If
    closing every gate still leaves the density above the target (ungated layers hold more), every
    gate stays closed. Returns the number of gates closed.
    """
    if deployed_density() <= target:
        return 0
    originals = [gate.log_alpha.detach().clone() for gate in gates]
    values = torch.cat([original.flatten() for original in originals])
    is_open = torch.cat([(gate.test_gate() > 0).flatten() for gate in gates])
    owner = torch.cat([torch.full((o.numel(),), index) for index, o in enumerate(originals)])
    position = torch.cat([torch.arange(o.numel()) for o in originals])
    candidates = torch.argsort(values.masked_fill(~is_open, float("inf")), stable=True)[: int(is_open.sum())]

    def close(count: int) -> float:
        chosen = candidates[:count]
        for index, (gate, original) in enumerate(zip(gates, originals)):
            gate.log_alpha.copy_(original)
            gate.log_alpha.view(-1)[position[chosen[owner[chosen] == index]]] = LOG_ALPHA_MIN
        return deployed_density()

    low, high = 0, len(candidates)  # closing ``low`` gates is too few; ``high`` is enough or all there are
    while high - low > 1:
        middle = (low + high) // 2
        if close(middle) <= target:
            high = middle
        else:
            low = middle
    close(high)
    return high
