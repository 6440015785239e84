"""Gate noise keyed by the training batch, so that a run's gate samples do not depend on its process count.

Every hard-concrete gate draws one sample per forward pass, shared by the whole minibatch. Under DDP
the ranks' shares of a global batch must see the same sample (one process sees one sample for the
whole batch), and it should be the sample one process would draw. torch's global stream gives
neither: what it yields depends on everything drawn before in that process (the data sampler of a
single process draws from it, DDP's ranks do not). So the noise of a training batch comes from a
stream seeded with ``(run key, epoch, batch index)``, the same in every process, for every world
size and after a resumption. It is drawn before the forward pass, for all gates at once, and handed
to the gates as plain tensors (a compiled model sees inputs, not a generator).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from consparse.gates.hard_concrete import HardConcreteGate


def batch_noise_seed(key: int, epoch: int, batch_index: int) -> int:
    """A 63-bit seed hashed from the three numbers (NumPy's ``SeedSequence``: distinct triples, unrelated streams)."""
    state = np.random.SeedSequence([key, epoch, batch_index]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


@contextmanager
def seeded_gate_noise(model: nn.Module, seed: int) -> Iterator[None]:
    """Within the block, the gates of ``model`` sample with uniform noise drawn from a stream seeded with ``seed``
    (one draw for all gates, split in module order)."""
    gates = [module for module in model.modules() if isinstance(module, HardConcreteGate)]
    if not gates:
        yield
        return
    log_alpha = gates[0].log_alpha
    generator = torch.Generator(device=log_alpha.device).manual_seed(seed)
    sizes = [gate.log_alpha.numel() for gate in gates]
    uniform = torch.rand(sum(sizes), generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    for gate, part in zip(gates, torch.split(uniform, sizes)):
        gate.noise = part.view(gate.log_alpha.shape)
    try:
        yield
    finally:
        for gate in gates:
            gate.noise = None
