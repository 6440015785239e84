"""Stochastic Frank-Wolfe (SFW) as a ``torch.optim.Optimizer`` whose param groups carry a constraint set.

For each param group with a constraint ``C``, at every step (Pokutta, Spiegel, Zimmer 2020; Zimmer,
Spiegel, Pokutta 2022)::

    m      <- mu * m + (1 - mu) * g        (momentum_form="ema", the default; first step m = g)
    m      <- mu * m + g                   (momentum_form="sum", the compression-aware-SFW code)
    V      =  C.lmo(m)                     argmin_{V in C} <m, V>
    gap    =  <m, theta - V>               the Frank-Wolfe gap (a stochastic certificate)
    eta    =  clamp(factor * lr, 0, 1)     step_rule="lr", factor from ``rescale``:
                 none: 1 | diameter: 1 / D | gradient: ||m|| / ||theta - V|| | fast_gradient: ||m|| / (D / 2)
                 | adaptive: rms(m / (sqrt(v) + eps)), v <- nu v + (1 - nu) g^2 (first step v = g^2)
           =  2 / (t + t0 + 2)             step_rule="sublinear" (t = 0 at the first step, t0 = step_offset; lr is ignored)
    theta  <- (1 - eta) * theta + eta * V

A group holding several tensors is one (global) constraint over their flattened concatenation. A
group without a constraint (``constraint=None``) takes a plain momentum-SGD step ``theta <- theta -
lr * m`` with the same momentum form: that is how biases or BatchNorm parameters can stay
unconstrained while one optimiser serves Lightning's automatic optimisation.

With ``rescale="gradient"`` the step has Euclidean length ``lr * ||m||`` (while eta < 1), the length
of an SGD step with learning rate ``lr``; hence lr behaves like an SGD learning rate. The EMA
momentum keeps ``||m||`` at the scale of one gradient; the summed form makes it up to ``1 / (1 - mu)``
times larger, so the same lr takes up to 10x longer steps at mu = 0.9.

``rescale="adaptive"`` ties eta to neither: it is lr times the root mean square of the momentum
divided entry-wise by the root of the EMA of squared gradients (Adam's normalisation; ``second_moment``
= nu). That ratio does not change when every gradient is scaled (TF-IDF inputs make them tiny, and
the gradient rescale's step with them), nor with the tensor's size; it is about 1 while successive
gradients agree and shrinks as they average out, so the step anneals where the gradient is noise.
The vertex is still the LMO of the plain momentum.

Lightning: automatic optimisation calls ``step(closure)``. Under DDP the gradients are all-reduced
during backward, before ``step``, so every rank computes the same LMO and takes the same step. Under
AMP (16-mixed) Lightning's precision plugin unscales the gradients (``GradScaler.unscale_``) before
``step`` because this optimiser does not claim to handle scaling itself
(``_step_supports_amp_scaling`` is not set), and skips the step on inf/NaN gradients. The step itself
(momenta, oracles, step sizes) runs in full precision even when called inside ``torch.autocast``
(bf16-mixed with manual optimisation): see ``consparse.precision``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from consparse.errors import ConfigError, ParameterError
from consparse.optim.constraints.base import ConstraintSet, safe_ratio
from consparse.optim.frank_wolfe_batched import ADAPTIVE_EPS, BatchLayout, batch_key, step_batched
from consparse.optim.frank_wolfe_move import Move, joined
from consparse.precision import full_precision
from consparse.validation import check_choice, check_int, check_range

MOMENTUM_FORMS = ("ema", "sum")
RESCALES = ("none", "diameter", "gradient", "fast_gradient", "adaptive")
STEP_RULES = ("lr", "sublinear", "short")
DIRECTIONS = ("frank_wolfe", "pairwise")
# Backtracking ratios of the short step's Lipschitz estimate (those of chop's backtracking_step_size).
LIPSCHITZ_INCREASE = 2.0
LIPSCHITZ_DECREASE = 0.9
# A trial within this relative margin of the decrease bound is accepted: float32 losses are exact to
# about 1e-7, and a quadratic meets the bound with equality when L is its curvature.
LINE_SEARCH_RTOL = 1e-6


class FrankWolfe(torch.optim.Optimizer):
    """Stochastic Frank-Wolfe with momentum (see the module docstring for the update).

    Args:
        params: tensors or param groups. A group's ``constraint`` (a ``ConstraintSet`` sized for
            the group's tensor, or for the concatenation of its tensors) makes it a Frank-Wolfe
            group; ``None`` makes it a momentum-SGD group. A group may also set ``name`` (used by
            ``frank_wolfe_gaps``) and override any of the hyperparameters below.
        lr: base learning rate alpha (stepped by the scheduler); in (0, 1] when ``rescale='none'``.
        momentum: mu in [0, 1); 0 uses the raw gradient.
        momentum_form: ``ema`` (``mu m + (1 - mu) g``) or ``sum`` (``mu m + g``).
        rescale: ``none | diameter | gradient | fast_gradient | adaptive`` (factor applied to lr).
        second_moment: nu in [0, 1), the EMA rate of the squared gradients of ``rescale='adaptive'``.
        step_rule: ``lr`` (``clamp(factor * lr, 0, 1)``), ``sublinear`` (``2 / (t + t0 + 2)``) or ``short``
            (the short step with backtracking; needs ``step(closure, evaluate=...)``).
        step_offset: ``t0 >= 0`` of the sublinear rule.
        direction: ``frank_wolfe`` (towards the vertex) or ``pairwise`` (from the away atom to the vertex).
        lipschitz: initial estimate of the smoothness constant ``L`` of the short step (> 0).
        max_backtracks: trials per short step before it gives up and takes no step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        momentum_form: str = "ema",
        rescale: str = "gradient",
        second_moment: float = 0.999,
        step_rule: str = "lr",
        step_offset: int = 0,
        direction: str = "frank_wolfe",
        lipschitz: float = 1.0,
        max_backtracks: int = 30,
    ) -> None:
        check_range("lipschitz", lipschitz, 0.0, low_inclusive=False)
        check_int("max_backtracks", max_backtracks, 1)
        self.lipschitz_init = float(lipschitz)
        self.max_backtracks = max_backtracks
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "momentum_form": momentum_form,
            "rescale": rescale,
            "second_moment": second_moment,
            "step_rule": step_rule,
            "step_offset": step_offset,
            "direction": direction,
            "constraint": None,
            "name": None,
        }
        super().__init__(params, defaults)
        #: What the latest short step did (``lipschitz``, ``step``, ``evaluations``); empty before one.
        self.last_line_search: dict[str, float] = {}
        self._batch_layouts: dict[tuple[int, ...], BatchLayout] = {}

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        check_range("lr", group["lr"], 0.0, low_inclusive=False)
        check_range("momentum", group["momentum"], 0.0, 1.0, high_inclusive=False)
        check_choice("momentum_form", group["momentum_form"], MOMENTUM_FORMS)
        check_choice("rescale", group["rescale"], RESCALES)
        check_range("second_moment", group["second_moment"], 0.0, 1.0, high_inclusive=False)
        check_choice("step_rule", group["step_rule"], STEP_RULES)
        check_int("step_offset", group["step_offset"], 0)
        check_choice("direction", group["direction"], DIRECTIONS)
        constraint = group["constraint"]
        if constraint is None:
            return
        if not isinstance(constraint, ConstraintSet):
            raise TypeError(
                f"a param group's constraint must be a ConstraintSet or None, got {type(constraint).__name__}"
            )
        if group["direction"] == "pairwise" and not constraint.supports_away_steps:
            raise ParameterError(
                "direction",
                f"pairwise steps need a set that knows its active atoms (a row-wise L1 ball); "
                f"param group {group['name'] or ''!s} has {constraint!r}",
            )
        if group["rescale"] == "none" and group["step_rule"] == "lr":
            check_range("lr", group["lr"], 0.0, 1.0, low_inclusive=False)
        numel = sum(p.numel() for p in group["params"])
        if numel != constraint.numel:
            raise ValueError(
                f"param group {group['name'] or ''!s}: the constraint {constraint!r} is sized for "
                f"{constraint.numel} entries but the group's tensors have {numel}"
            )

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Any = None, evaluate: Callable[[], torch.Tensor | float] | None = None) -> Any:
        """One step of every group; ``evaluate`` (the loss on the same batch, no gradients) is needed
        by groups with ``step_rule="short"``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_groups(evaluate)
        return loss

    @full_precision
    def _step_groups(self, evaluate: Callable[[], torch.Tensor | float] | None) -> None:
        short: list[Move] = []
        batches: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for group in self.param_groups:
            key = batch_key(group, self.state, self.batched_device_types)
            if key is None:
                self._step_group(group, short)
            else:
                batches.setdefault(key, []).append(group)
        for groups in batches.values():
            if len(groups) > 1:
                step_batched(groups, self.state, self._batch_layouts)
            else:
                self._step_group(groups[0], short)
        if short:
            if evaluate is None:
                raise RuntimeError(
                    "step_rule='short' evaluates the loss at trial points: call step(closure, evaluate=f) "
                    "with f() the loss on the same batch"
                )
            self._short_step(short, evaluate)

    def _step_group(self, group: dict[str, Any], short: list[Move]) -> None:
        move = self._prepare(group)
        if move is None:
            return
        if group["step_rule"] == "short":
            short.append(move)
        else:
            m_norm = self._normalised_norm(move.params, group) if group["rescale"] == "adaptive" else None
            eta = self._step_size(group, move.m, move.direction, move.constraint, move.step, m_norm)
            move.step_in_place(eta)

    # ------------------------------------------------------------------ many groups, together
    #: Device types where groups step together (``frank_wolfe_batched``): where every kernel launch costs
    #: time (GPUs). On the CPU there is no launch to save, and the concatenations would add passes.
    batched_device_types: frozenset[str] = frozenset({"cuda", "xpu"})

    def _prepare(self, group: dict[str, Any]) -> Move | None:
        """The group's momentum, vertex and direction (unconstrained groups step right away: None)."""
        params: list[torch.Tensor] = group["params"]
        if not params or all(p.grad is None for p in params):
            return None
        momenta = [self._momentum(p, group) for p in params]
        state = self.state[params[0]]
        state["step"] = state.get("step", 0) + 1
        constraint: ConstraintSet | None = group["constraint"]
        if constraint is None:
            for p, m in zip(params, momenta):
                p.add_(m, alpha=-group["lr"])
            return None
        m = joined(momenta, constraint)
        theta = joined(params, constraint)
        vertex = constraint.lmo_at(m, theta)
        state["fw_gap"] = torch.dot(m.reshape(-1), (theta - vertex).reshape(-1))
        if group["direction"] == "pairwise":
            away, weight = constraint.away_vertex(m, theta)
            return Move(params, constraint, m, vertex, vertex - away, state["step"], away, weight)
        return Move(params, constraint, m, vertex, vertex - theta, state["step"])

    def _short_step(self, moves: list[Move], evaluate: Callable[[], torch.Tensor | float]) -> None:
        """One backtracking line search over the groups' joint direction (see the module docstring)."""
        state = self.state[moves[0].params[0]]
        lipschitz = float(state.get("lipschitz", self.lipschitz_init))
        grads = [move.gradient() for move in moves]
        slope = float(sum((g * move.direction).sum() for g, move in zip(grads, moves)))
        curvature = float(sum(move.direction.square().sum() for move in moves))
        record = {"lipschitz": lipschitz, "step": 0.0, "evaluations": 0.0}
        if slope < 0 and curvature > 0:
            start = [joined(move.params, move.constraint).clone() for move in moves]
            base = float(evaluate())
            record["evaluations"] = 1.0
            for _ in range(self.max_backtracks):
                gamma = min(-slope / (lipschitz * curvature), 1.0)
                taken = [move.apply(gamma) for move in moves]
                trial = float(evaluate())
                record["evaluations"] += 1.0
                bound = sum(
                    float((g * d).sum()) + 0.5 * lipschitz * float(d.square().sum()) for g, d in zip(grads, taken)
                )
                if trial <= base + bound + LINE_SEARCH_RTOL * max(abs(base), 1.0):
                    record["step"] = gamma
                    lipschitz *= LIPSCHITZ_DECREASE
                    break
                for move, values in zip(moves, start):
                    move.restore(values)
                lipschitz *= LIPSCHITZ_INCREASE
        state["lipschitz"] = lipschitz
        record["lipschitz"] = lipschitz
        self.last_line_search = record

    def _momentum(self, p: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        if grad.is_sparse:
            raise RuntimeError("FrankWolfe does not support sparse gradients")
        if group["rescale"] == "adaptive" and group["constraint"] is not None:
            self._update_second_moment(p, grad, group["second_moment"])
        mu = group["momentum"]
        if mu == 0:
            return grad
        state = self.state[p]
        buffer = state.get("momentum_buffer")
        if buffer is None:
            state["momentum_buffer"] = buffer = grad.detach().clone()
        elif group["momentum_form"] == "ema":
            buffer.mul_(mu).add_(grad, alpha=1.0 - mu)
        else:
            buffer.mul_(mu).add_(grad)
        return buffer

    def _update_second_moment(self, p: torch.Tensor, grad: torch.Tensor, nu: float) -> None:
        state = self.state[p]
        second = state.get("second_moment")
        if second is None:
            state["second_moment"] = grad.detach().square()
        else:
            second.mul_(nu).addcmul_(grad, grad, value=1.0 - nu)

    def _normalised_norm(self, params: list[torch.Tensor], group: dict[str, Any]) -> torch.Tensor:
        """``||m / (sqrt(v) + eps)||`` over the group's tensors (``rescale='adaptive'``)."""
        squares = []
        for p in params:
            state = self.state[p]
            m = state.get("momentum_buffer", p.grad) if group["momentum"] else p.grad
            if m is None:
                continue
            normalized = m / (state["second_moment"].sqrt() + ADAPTIVE_EPS)
            squares.append(normalized.square().sum())
        return torch.stack(squares).sum().sqrt()

    @staticmethod
    def _step_size(
        group: dict[str, Any],
        m: torch.Tensor,
        direction: torch.Tensor,
        constraint: ConstraintSet,
        step: int,
        m_norm: torch.Tensor | None = None,
    ) -> float | torch.Tensor:
        """eta in [0, 1] of the ``lr`` and ``sublinear`` rules; a tensor when it depends on norms (no
        host-device sync). ``m_norm``: ``||m / (sqrt(v) + eps)||`` for ``rescale='adaptive'``; None: ``||m||``."""
        if group["step_rule"] == "sublinear":
            return 2.0 / (step + 1 + group["step_offset"])
        lr = float(group["lr"])
        rescale = group["rescale"]
        if rescale == "none":
            return min(lr, 1.0)
        if rescale == "diameter":
            return min(lr / constraint.diameter, 1.0)
        if rescale == "adaptive":
            return torch.clamp(m_norm * (lr / constraint.numel**0.5), 0.0, 1.0).to(m.dtype)
        if m_norm is None:
            m_norm = torch.linalg.vector_norm(m)
        if rescale == "gradient":
            factor = safe_ratio(m_norm, torch.linalg.vector_norm(direction))
        else:
            factor = m_norm / (constraint.diameter / 2.0)
        return torch.clamp(factor * lr, 0.0, 1.0).to(m.dtype)

    # ------------------------------------------------------------------ certificates and feasibility
    def frank_wolfe_gaps(self) -> dict[str, torch.Tensor]:
        """``{group name (or index): <m, theta - V>}`` from each constrained group's last step.

        The sum over groups is the gap of the product set. It is computed from the momentum, so it
        is a stochastic estimate of the true gap; 0-dim tensors, so logging them needs no sync.
        """
        gaps: dict[str, torch.Tensor] = {}
        for index, group in enumerate(self.param_groups):
            if group["constraint"] is None or not group["params"]:
                continue
            gap = self.state[group["params"][0]].get("fw_gap")
            if gap is not None:
                gaps[str(group["name"] if group["name"] is not None else index)] = gap
        return gaps

    @torch.no_grad()
    def make_feasible_(self) -> int:
        """Rescale, in place, every constrained group's tensors into their set; returns how many groups moved.

        Frank-Wolfe iterates are convex combinations of the start and vertices, so a feasible start
        keeps every iterate feasible; an infeasible one would only be forgotten geometrically.
        """
        moved = 0
        for group in self.param_groups:
            constraint = group["constraint"]
            if constraint is None or not group["params"]:
                continue
            params = group["params"]
            theta = joined(params, constraint)
            if constraint.is_feasible(theta):
                continue
            feasible = constraint.make_feasible(theta).reshape(-1)
            for p, value in zip(params, torch.split(feasible, [p.numel() for p in params])):
                p.copy_(value.reshape(p.shape))
            moved += 1
        return moved

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """As torch's, with each constraint replaced by its plain description (checkpoints stay loadable
        with ``weights_only=True``); the sets themselves are rebuilt from the config."""
        saved = super().state_dict()
        for group in saved["param_groups"]:
            constraint = group.get("constraint")
            group["constraint"] = constraint.describe() if isinstance(constraint, ConstraintSet) else None
        return saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, keeping this optimiser's constraint sets (the checkpoint holds descriptions only)."""
        constraints = [group["constraint"] for group in self.param_groups]
        saved_kinds = [(g.get("constraint") or {}).get("set") for g in state_dict["param_groups"]]
        current_kinds = [c.kind if c is not None else None for c in constraints]
        if saved_kinds != current_kinds:
            raise ConfigError(
                "method.constraint",
                f"the checkpoint's constraint sets {saved_kinds} differ from this run's {current_kinds}; "
                "resume with the same method.constraint settings",
            )
        super().load_state_dict(state_dict)
        for group, constraint in zip(self.param_groups, constraints):
            group["constraint"] = constraint
