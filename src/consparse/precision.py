"""Full-precision islands inside mixed-precision training.

Under ``trainer.precision=bf16-mixed`` (the GPU default) Lightning runs the training step inside
``torch.autocast``, which casts every matrix product to bfloat16 (8 bits of mantissa). That is what
makes convolutions fast, and it is wrong for the method numerics that select, compare or solve:
a top-k on bfloat16 magnitudes ties thousands of entries, a power iteration or a fixed point
stalls at a residual of ~1e-2, and a LASSO path's knots (closed-form crossings) come out in the
wrong order. ``full_precision`` runs such a function with autocast switched off on every device
type where it is on and its low-precision floating tensor arguments promoted to float32; float64
stays float64. Outside autocast it only checks the arguments' dtypes.

Used by the Frank-Wolfe optimiser and its LMOs, the hard-concrete gate probabilities and expected
densities, the Lagrange multipliers, the implicit model's fixed point and adjoint, and the LASSO
solvers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Device types whose autocast state is checked (the ones Lightning's precision plugins enable).
_AUTOCAST_DEVICES = ("cuda", "cpu")


def _any_autocast_enabled_by_device() -> bool:
    return any(torch.is_autocast_enabled(device) for device in _AUTOCAST_DEVICES)


# One call for every device type; torch.is_autocast_enabled(device) parses its argument each time,
# which costs more than the functions it guards on small tensors. Private, hence the fallback.
_any_autocast_enabled = getattr(torch._C, "_is_any_autocast_enabled", _any_autocast_enabled_by_device)


@contextmanager
def autocast_disabled() -> Iterator[None]:
    """A region where autocast is off on every device type where it was on."""
    with ExitStack() as stack:
        for device in _AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        yield


def _is_low_precision(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION


def _holds_low_precision(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    # Plain loops: a generator expression costs more than the rest of the check.
    for value in args:
        if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
            return True
    for value in kwargs.values():
        if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
            return True
    return False


def as_full_precision(value: Any) -> Any:
    """``value`` with float16 / bfloat16 tensors promoted to float32 (other values unchanged)."""
    return value.float() if _is_low_precision(value) else value


def full_precision(function: F) -> F:
    """Decorate ``function`` to run without autocast, its low-precision tensor arguments in float32."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        # The common case (called outside autocast with float32 tensors, or from inside another
        # island) returns at once: the optimiser calls these once per parameter group and step.
        if not _any_autocast_enabled() and not _holds_low_precision(args, kwargs):
            return function(*args, **kwargs)
        args = tuple(as_full_precision(a) for a in args)
        kwargs = {k: as_full_precision(v) for k, v in kwargs.items()}
        with autocast_disabled():
            return function(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
