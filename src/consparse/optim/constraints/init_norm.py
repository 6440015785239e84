"""The expected norm of each parameter at initialisation, used to size its constraint set.

``E||theta||_2`` is averaged over ``samples`` calls of ``reset_parameters()`` on a throw-away copy
of the module that owns the parameter, one parameter at a time: the model being trained is never
re-initialised, and two parameters of the same shape (a BatchNorm weight and a bias, say) get their
own value. The SFW code keys the average by tensor shape, so such parameters overwrite each other.

The draws use a private random stream (``torch.random.fork_rng`` with a fixed ``seed``), so the
norms are the same on every DDP rank and after a resumption, and the training stream is untouched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from consparse.validation import check_int

# A parameter whose expected initial norm is zero (a zero-initialised bias) gets this norm instead,
# as in the SFW code, so that its set is not the single point {0}.
ZERO_NORM_REPLACEMENT = 1.0


def expected_init_norms(model: nn.Module, samples: int = 10, seed: int = 0) -> dict[str, float]:
    """``{parameter name: E||p||_2 at initialisation}`` for every parameter of ``model``.

    A module without ``reset_parameters`` contributes the current norm of its parameters (the
    initial norm when called before training).
    """
    check_int("init_norm_samples", samples, 1)
    norms: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module_name, module in model.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if not own:
                continue
            averages = _average_reset_norms(module, list(own), samples)
            for name, parameter in own.items():
                norm = (
                    averages[name]
                    if averages is not None
                    else float(torch.linalg.vector_norm(parameter.detach()))
                )
                full_name = f"{module_name}.{name}" if module_name else name
                norms[full_name] = norm if norm > 0 else ZERO_NORM_REPLACEMENT
    return norms


def _average_reset_norms(module: nn.Module, names: list[str], samples: int) -> dict[str, float] | None:
    """Mean norm of each named parameter over ``samples`` re-initialisations of a CPU copy (None: cannot reset)."""
    if not callable(getattr(module, "reset_parameters", None)):
        return None
    scratch = copy.deepcopy(module).cpu()
    totals = dict.fromkeys(names, 0.0)
    with torch.no_grad():
        for _ in range(samples):
            scratch.reset_parameters()
            for name in names:
                totals[name] += float(torch.linalg.vector_norm(getattr(scratch, name).detach().double()))
    return {name: total / samples for name, total in totals.items()}
