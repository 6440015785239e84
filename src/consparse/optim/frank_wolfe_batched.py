"""The Frank-Wolfe step of many param groups at once, for ``FrankWolfe`` on GPUs.

Same update as the group-by-group step (``FrankWolfe._prepare`` + ``_step_size`` +
``Move.step_in_place``), computed on the concatenation of the groups' tensors with per-group sums
(``index_add_``), so that a step costs a few dozen kernels instead of a few dozen per group: on a
GPU each of those small kernels costs as much as the work it does. Results equal the group-by-group
step up to the order of floating-point summation.

Batched: L2 balls (BatchNorm weights and biases, biases) and k-support balls (the weights of
``method=sfw``'s default), with a Frank-Wolfe direction, the ``lr`` or ``sublinear`` rule and their
momentum (and, for ``rescale="adaptive"``, second-moment) buffers in place: all of a ResNet's groups
after the first step.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from consparse.optim.constraints.base import safe_ratio
from consparse.optim.constraints.ksparse import top_k_indices_rows
from consparse.optim.constraints.ksupport import KSupportNormBall
from consparse.optim.constraints.lp import LpBall

# Added to sqrt(v) by rescale="adaptive" (Adam's epsilon): entries whose gradient was always zero add nothing.
ADAPTIVE_EPS = 1e-8


@dataclass
class BatchLayout:
    """The concatenation of several groups: the group of each entry, radius, diameter and root of the
    entry count per group, where each group starts and how many entries it has; for k-support balls,
    k per group and the group of each kept entry (in the order the kept entries are gathered)."""

    segments: torch.Tensor
    radii: torch.Tensor
    diameters: torch.Tensor
    root_numels: torch.Tensor
    sizes: list[int]
    numels: list[int]
    starts: list[int]
    ks: list[int] | None
    kept_segments: torch.Tensor | None


def batch_key(group: dict[str, Any], state: dict[Any, Any], device_types: Collection[str]) -> tuple[Any, ...] | None:
    """Groups with the same key take one batched step (``step_batched``); None: a step of its own."""
    constraint = group["constraint"]
    params = group["params"]
    if isinstance(constraint, LpBall) and constraint.p == 2.0:
        kind = "l2"
    elif isinstance(constraint, KSupportNormBall):
        kind = "ksupport"
    else:
        return None
    if not params or params[0].device.type not in device_types:
        return None
    if group["direction"] != "frank_wolfe" or group["step_rule"] not in ("lr", "sublinear"):
        return None
    if any(p.grad is None or p.grad.is_sparse for p in params):
        return None
    if group["momentum"] and any("momentum_buffer" not in state[p] for p in params):
        return None  # the first step creates the buffers
    adaptive = group["rescale"] == "adaptive"
    if adaptive and any("second_moment" not in state[p] for p in params):
        return None
    step = state[params[0]].get("step", 0)
    return (kind, group["lr"], group["momentum"], group["momentum_form"], group["rescale"], group["step_rule"],
            group["step_offset"], group["second_moment"] if adaptive else None, step, params[0].device,
            params[0].dtype)


def step_batched(
    groups: list[dict[str, Any]], state: dict[Any, Any], layouts: dict[tuple[int, ...], BatchLayout]
) -> None:
    """One step of ``groups`` (all with the same ``batch_key``); ``layouts`` caches their ``BatchLayout``."""
    first = groups[0]
    params = [p for group in groups for p in group["params"]]
    momenta = _momenta(params, state, first["momentum"], first["momentum_form"])
    layout = _layout(groups, params, layouts)
    m = torch.cat([t.reshape(-1) for t in momenta])
    theta = torch.cat([p.reshape(-1) for p in params])
    m_norm = _group_norms(m, layout.numels)
    vertex = _vertices(m, m_norm, layout)
    difference = theta - vertex
    gaps = _group_dots(m, difference, layout, len(groups))
    for number, group in enumerate(groups):
        group_state = state[group["params"][0]]
        group_state["step"] = group_state.get("step", 0) + 1
        group_state["fw_gap"] = gaps[number]
    if first["rescale"] == "adaptive":
        m_norm = _group_norms(m / _root_second_moments(params, state, first["second_moment"]), layout.numels)
    eta = _step_sizes(first, state[first["params"][0]]["step"], m_norm, difference, layout)
    stepped = torch.lerp(theta, vertex, eta)
    torch._foreach_copy_(params, [v.view(p.shape) for v, p in zip(torch.split(stepped, layout.sizes), params)])


def _momenta(params: list[torch.Tensor], state: dict[Any, Any], mu: float, form: str) -> list[torch.Tensor]:
    grads = [p.grad for p in params]
    if mu == 0:
        return grads
    momenta = [state[p]["momentum_buffer"] for p in params]
    torch._foreach_mul_(momenta, mu)
    torch._foreach_add_(momenta, grads, alpha=1.0 - mu if form == "ema" else 1.0)
    return momenta


def _root_second_moments(params: list[torch.Tensor], state: dict[Any, Any], nu: float) -> torch.Tensor:
    """Updates the EMAs of the squared gradients; returns ``sqrt(v) + eps``, concatenated."""
    seconds = [state[p]["second_moment"] for p in params]
    grads = [p.grad for p in params]
    torch._foreach_mul_(seconds, nu)
    torch._foreach_addcmul_(seconds, grads, grads, value=1.0 - nu)
    return torch.cat([v.reshape(-1) for v in seconds]).sqrt_().add_(ADAPTIVE_EPS)


def _group_norms(flat: torch.Tensor, counts: list[int]) -> torch.Tensor:
    # One multi-tensor kernel for all groups.
    return torch.stack(torch._foreach_norm(list(torch.split(flat, counts))))


def _group_dots(a: torch.Tensor, b: torch.Tensor, layout: BatchLayout, count: int) -> torch.Tensor:
    if layout.ks is None:  # small groups: one scatter-add over all of them
        return a.new_zeros(count).index_add_(0, layout.segments, a * b)
    # Large groups: a scatter-add would pile millions of atomic adds onto a few addresses.
    return torch.stack([torch.dot(x, y) for x, y in zip(torch.split(a, layout.numels), torch.split(b, layout.numels))])


def _vertices(m: torch.Tensor, m_norm: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """Every group's LMO vertex, concatenated (``LpBall.lmo`` for p = 2, ``KSupportNormBall.lmo``)."""
    if layout.ks is None:
        per_entry = layout.segments
        return -layout.radii.index_select(0, per_entry) * safe_ratio(m, m_norm.index_select(0, per_entry))
    # Per group: keep the k largest |m|, V = -r m_k / ||m_k||.
    index = torch.cat([top_k_indices_rows(m[start:start + n].reshape(1, -1), k)[0] + start
                       for start, n, k in zip(layout.starts, layout.numels, layout.ks)])
    values = m.gather(0, index)
    scale = safe_ratio(layout.radii, _group_norms(values, layout.ks)).index_select(0, layout.kept_segments)
    return torch.zeros_like(m).scatter_(0, index, -scale * values)


def _step_sizes(
    first: dict[str, Any], step: int, m_norm: torch.Tensor, difference: torch.Tensor, layout: BatchLayout
) -> float | torch.Tensor:
    """eta of ``FrankWolfe._step_size``, per entry when it differs between groups."""
    lr, rescale = float(first["lr"]), first["rescale"]
    if first["step_rule"] == "sublinear":
        return 2.0 / (step + 1 + first["step_offset"])
    if rescale == "none":
        return min(lr, 1.0)
    if rescale == "diameter":
        return torch.clamp(lr / layout.diameters, max=1.0).index_select(0, layout.segments)
    if rescale == "adaptive":
        factor = m_norm / layout.root_numels
    elif rescale == "gradient":
        factor = safe_ratio(m_norm, _group_norms(difference, layout.numels))
    else:
        factor = m_norm / (layout.diameters / 2.0)
    return torch.clamp(factor * lr, 0.0, 1.0).index_select(0, layout.segments)


def _layout(
    groups: list[dict[str, Any]], params: list[torch.Tensor], layouts: dict[tuple[int, ...], BatchLayout]
) -> BatchLayout:
    """Which group each entry belongs to, and the groups' radii, diameters and k, built once per set of groups."""
    key = tuple(id(p) for p in params)
    layout = layouts.get(key)
    if layout is not None:
        return layout
    device, dtype = params[0].device, params[0].dtype
    numels = [sum(p.numel() for p in group["params"]) for group in groups]
    constraints = [group["constraint"] for group in groups]
    ks = [c.k for c in constraints] if isinstance(constraints[0], KSupportNormBall) else None

    # Filled on the device, not copied from host lists: a copy would wait for the GPU's queue.
    def filled(values: list[float]) -> torch.Tensor:
        return torch.stack([torch.full((), value, dtype=dtype, device=device) for value in values])

    def segments(counts: list[int]) -> torch.Tensor:
        return torch.cat([torch.full((n,), index, dtype=torch.long, device=device) for index, n in enumerate(counts)])

    layout = BatchLayout(
        segments=segments(numels),
        radii=filled([c.radius for c in constraints]),
        diameters=filled([c.diameter for c in constraints]),
        root_numels=filled([n**0.5 for n in numels]),
        sizes=[p.numel() for p in params],
        numels=numels,
        starts=[sum(numels[:index]) for index in range(len(numels))],
        ks=ks,
        kept_segments=segments(ks) if ks is not None else None,
    )
    layouts[key] = layout
    return layout
