"""``method=l0``: hard-concrete gates under density constraints, purged into a smaller model.

``l0`` is "Controlled Sparsity via Constrained Optimization" (Gallego-Posada et al., NeurIPS 2022):
an expected density is held below ``target_density`` (one number: the whole model; a list: one
target per gated layer) by Lagrange multipliers updated by projected gradient ascent,
simultaneously with the primal step, with dual restarts. Which density is ``density_measure``:
``kept_weights`` (default) is the expected share of weights the purged model keeps, the platform's
``density``, cascade included (``consparse.gates.kept``); ``gates`` is the paper's expected share of
weights whose own gate is open, which ignores the cascade and so lands the purged model under its
target. ``HardConcreteMethod`` is what ``l0`` shares with ``l0_penalty`` (``consparse.methods.l0_penalty``).

Optimisation is Lightning's automatic optimisation: one optimiser with two parameter groups
(weights at the optimiser's learning rate, gates at ``gates_lr``). Simultaneous descent-ascent fits
it without manual optimisation: ``training_step`` builds ``f + sum_j lambda_j g_j`` with the
multipliers held fixed and keeps the defects ``g_j`` (functions of the gate parameters only, so
identical across gradient-accumulation micro-batches and DDP ranks); ``optimizer_step`` lets the
optimiser step, then takes the dual step from those pre-step defects and clamps the gates.

Under DDP a run takes the steps one process takes on the same global batch: the gate sample of a
batch is drawn from a stream keyed by the run's seed, the epoch and the batch index
(``consparse.gates.noise``), so every rank, and a single process, gates the batch alike.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from consparse.data.info import DatasetInfo
from consparse.errors import ParameterError
from consparse.gates import (
    batch_noise_seed,
    clamp_gates,
    deterministic_gate_densities,
    expected_l2,
    expected_layer_densities,
    expected_model_density,
    fold_gates,
    gate_model,
    gate_parameters,
    gated_layers,
    purge,
    seeded_gate_noise,
)
from consparse.gates.kept import KeptWeights
from consparse.gates.trim import close_weakest_gates
from consparse.methods.base import Deployment, SparseMethod
from consparse.optim.lagrangian import LagrangeMultipliers
from consparse.validation import check_choice, check_density, check_length, check_range

SPARSITY_TYPES = ("structured", "unstructured")
# What l0's target constrains: the purged model's kept weights (the platform's density) or the paper's open-gate share.
DENSITY_MEASURES = ("kept_weights", "gates")
# What the multipliers ascend on: that density for the test gates (the deployed model) or its expectation.
DUAL_DEFECTS = ("deployed", "expected")


def per_constraint(name: str, value: Any, layers: Sequence[str], check: Any) -> tuple[list[float], bool]:
    """``value`` as one number (model-wise) or one per gated layer (layer-wise); returns (values, layerwise)."""
    if isinstance(value, (list, tuple)):
        check_length(name, value, len(layers), "gated layers")
        for item in value:
            check(name, item)
        return [float(v) for v in value], True
    check(name, value)
    return [float(value)], False


class HardConcreteMethod(SparseMethod):
    """What ``l0`` and ``l0_penalty`` share: gating, loss, two learning rates, clamping, purge, metrics.

    Subclasses say how the constrained quantities enter the loss (``density_term``) and what
    happens after each optimiser step (``after_optimizer_step``).

    Args:
        model, info: as for ``SparseMethod``; the model is gated in place.
        sparsity: ``structured`` (gates per input neuron / output channel) or ``unstructured`` (per weight).
        droprate_init: initial gate drop rate in (0, 1): one number or one per gated layer.
        gated_layers: null (the paper's layers) or ``fnmatch`` patterns of layer names to gate.
        gates_lr: learning rate of the gate parameters ``log_alpha`` (same optimiser class as the weights).
        weight_decay: L2 coefficient applied through the loss, gated weights weighted by their
            detached probability of being active; the optimiser's own weight_decay must be 0.
        divide_gated_conv_decay: divide the weight decay of gated convolutions by ``1 - droprate_init``
            (Louizos et al.'s rule; see ``consparse.gates.density.expected_l2``).
        gate_placement: ``norm_output`` or ``filter`` (the authors'): where the gate of a convolution
            followed by a BatchNorm acts (``consparse.gates.batchnorm``).
        schedule_gates: let the learning-rate scheduler decay the gates' learning rate too
            (the authors decay the weights' only).
        **kwargs: ``optimizer``, ``scheduler``, ``scheduler_interval``, ``label_smoothing`` of ``SparseMethod``.
    """

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        sparsity: str = "structured",
        droprate_init: float | Sequence[float] = 0.5,
        gated_layers: Sequence[str] | None = None,
        gates_lr: float = 0.01,
        weight_decay: float = 0.0,
        divide_gated_conv_decay: bool = False,
        gate_placement: str = "norm_output",
        schedule_gates: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, info, target_density=None, **kwargs)
        check_choice("sparsity", sparsity, SPARSITY_TYPES)
        check_range("gates_lr", gates_lr, 0.0, low_inclusive=False)
        check_range("weight_decay", weight_decay, 0.0)
        check_choice("schedule_gates", schedule_gates, [True, False])
        check_choice("divide_gated_conv_decay", divide_gated_conv_decay, [True, False])
        optimizer = self.optimizer_factory
        if isinstance(optimizer, functools.partial) and optimizer.keywords.get("weight_decay", 0):
            raise ParameterError(
                "optimizer.weight_decay",
                f"got {optimizer.keywords['weight_decay']}; must be 0 for {type(self).__name__}: it would decay the "
                "gates too. Use method.weight_decay (applied through the loss, weighted by the gates)",
            )
        self.sparsity = sparsity
        self.gates_lr = float(gates_lr)
        self.weight_decay = float(weight_decay)
        self.divide_gated_conv_decay = divide_gated_conv_decay
        self.gate_placement = gate_placement
        self.schedule_gates = schedule_gates
        self.gated_names = gate_model(model, structured=sparsity == "structured", droprate_init=droprate_init,
                                      layers=gated_layers, placement=gate_placement)
        self.layerwise = False
        # The run's seed (seed_everything's, the same on every DDP rank) keys the gate noise of each batch.
        self.noise_key = torch.initial_seed()

    # ------------------------------------------------------------------ what subclasses decide
    def density_term(self, densities: torch.Tensor) -> torch.Tensor:
        """How the constrained densities (one model density or one per gated layer) enter the loss."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step, before the gates are clamped."""

    # ------------------------------------------------------------------ densities
    def constrained_densities(self) -> torch.Tensor:
        """The expected densities the constraints or penalties act on: ``[rho_model]`` or ``rho_l`` per layer."""
        if self.layerwise:
            return expected_layer_densities(self.model)
        return expected_model_density(self.model).unsqueeze(0)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        with seeded_gate_noise(self.model, batch_noise_seed(self.noise_key, self.current_epoch, batch_idx)):
            logits = self(x)
        data_loss = self.loss(logits, y)
        objective = data_loss
        if self.weight_decay:
            objective = objective + 0.5 * self.weight_decay * expected_l2(self.model, self.divide_gated_conv_decay)
        self.log_step("train", data_loss, logits, y)
        return objective + self.density_term(self.constrained_densities())

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # Logged once per epoch (the state at its end): a self.log per step costs more than a small model's step.
        # The figures are functions of parameters every rank shares: averaging them over ranks changes nothing.
        for name, value in self.epoch_figures().items():
            self.log(name, value, prog_bar=name == "train/expected_density", sync_dist=True)

    def epoch_figures(self) -> dict[str, float]:
        """Scalars logged at the end of each training epoch."""
        with torch.no_grad():
            return {"train/expected_density": float(expected_model_density(self.model))}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.after_optimizer_step()
        clamp_gates(self.model)

    def parameter_groups(self) -> list[dict[str, Any]]:
        gates = gate_parameters(self.model)
        gate_ids = {id(p) for p in gates}
        weights = [p for p in self.model.parameters() if id(p) not in gate_ids]
        return [{"params": weights, "name": "weights"}, {"params": gates, "lr": self.gates_lr, "name": "gates"}]

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)
        if not self.schedule_gates:
            for group in scheduler.optimizer.param_groups:
                if group.get("name") == "gates":
                    group["lr"] = self.gates_lr

    # ------------------------------------------------------------------ the method seam
    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        """The purged model: same classes, sliced layers, equal to the gated model in eval mode.

        Its reference is the dense architecture with the trained weights and the test gates folded in
        (no gates); the compression curve prunes a copy of its own of the same.
        """
        deployed = purge(self.model.eval(), self.info.input_shape)
        reference = fold_gates(self.model).eval()
        return Deployment(deployed, reference, fold_gates(self.model).eval(), self.method_metrics)

    def method_metrics(self) -> dict[str, Any]:
        with torch.no_grad():
            layer_densities = expected_layer_densities(self.model).tolist()
            model_density = float(expected_model_density(self.model))
        return {
            "sparsity": self.sparsity,
            "gate_placement": self.gate_placement,
            "constraint": "layer" if self.layerwise else "model",
            "gated_layers": list(self.gated_names),
            "expected_density": {"model": model_density, "layers": dict(zip(self.gated_names, layer_densities))},
            "test_gate_density": deterministic_gate_densities(self.model),
        }


class L0Method(HardConcreteMethod):
    """Constrained L0: expected density ``<= target_density`` via Lagrange multipliers.

    Args:
        target_density: a number in (0, 1] (one model-wise constraint) or a list with one number per
            gated layer (layer-wise constraints).
        density_measure: ``kept_weights``: the expected share of weights the purged model keeps (of
            the whole model's sparsifiable weights, or of each gated layer's); ``gates``: the expected
            share of gated weights whose own gate is open (the paper's constraint).
        dual_defect: what the multipliers' ascent measures. ``deployed``: the density for the test
            gates, as the platform will measure the purged model (a proxy-Lagrangian, Cotter et al.
            2019: the primal step descends on the differentiable expectation, the dual step ascends
            on the constraint that counts); ``expected``: the expectation itself, as in the paper. The
            expectation over-counts a closed gate (``P(z != 0)`` stays above 0.047 at the clamp of
            ``log_alpha``), so holding it lands the deployed model under its target.
        relative_constraint: hold ``density / target - 1 <= 0`` instead of ``density - target <= 0``.
            The multiplier a target needs grows as the target shrinks (a gate's share of the kept
            weights shrinks with the density of the layers beside it), so with the absolute form one
            ``dual_lr`` is slow at small targets and overshoots large ones; the relative form is
            the absolute one with ``dual_lr / target**2``, one step size for every target.
        dual_lr: step size of the projected ascent on the multipliers (the paper's 1e-4). Keep it
            small: once the multipliers' term dominates the loss's, every gate's ``log_alpha`` moves
            at about the gates' learning rate (Adam), all together, before the loss can tell the
            gates apart; ``trim_to_target`` lands a run whose multipliers stay short of the target.
        dual_restarts: reset a multiplier to 0 whenever its constraint is strictly satisfied.
        target_margin: the multipliers hold the density at or below ``target * (1 - target_margin)``.
            With dual restarts nothing pushes the density down while the constraint holds, so
            descent-ascent hovers just above the level it holds and a run ends a few percent over
            it; aiming that far under lands the deployed model on the target. 0: hold the target itself.
        trim_to_target: at deployment, if the deployed density (the constrained measure, for the
            test gates) is still above a target, close that constraint's open gates with the lowest
            ``log_alpha`` until it is not: a run too short for its multipliers to get there still
            deploys at the density asked for. ``method_metrics.trimmed_gates`` says how many closed.
        **kwargs: see ``HardConcreteMethod``.
    """

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        target_density: float | Sequence[float] | None = 0.5,
        density_measure: str = "kept_weights",
        dual_defect: str = "deployed",
        relative_constraint: bool = False,
        dual_lr: float = 1e-4,
        dual_restarts: bool = True,
        target_margin: float = 0.0,
        trim_to_target: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, info, **kwargs)
        if target_density is None:
            raise ParameterError(
                "target_density",
                f"l0 needs a target: a number in (0, 1] (model-wise) or a list of {len(self.gated_names)} numbers "
                f"in (0, 1] (layer-wise, one per gated layer: {self.gated_names})",
            )
        check_choice("dual_restarts", dual_restarts, [True, False])
        check_choice("density_measure", density_measure, DENSITY_MEASURES)
        check_choice("dual_defect", dual_defect, DUAL_DEFECTS)
        check_choice("relative_constraint", relative_constraint, [True, False])
        check_range("target_margin", target_margin, 0.0, 1.0, high_inclusive=False)
        check_choice("trim_to_target", trim_to_target, [True, False])
        self.trim_to_target = trim_to_target
        # Set by finalize: how many gates the trim closed (None before deployment).
        self.trimmed_gates: int | None = None
        self.relative_constraint = relative_constraint
        self.density_measure = density_measure
        self.dual_defect = dual_defect
        self.kept = KeptWeights(self.model, info.input_shape) if density_measure == "kept_weights" else None
        targets, self.layerwise = per_constraint(
            "target_density", target_density, self.gated_names, lambda f, v: check_density(f, v, allow_none=False)
        )
        self.target_density = targets if self.layerwise else targets[0]
        self.target_margin = float(target_margin)
        # The levels the multipliers hold: the targets less the margin.
        self.register_buffer("aims", torch.tensor(targets) * (1.0 - self.target_margin), persistent=False)
        self.multipliers = LagrangeMultipliers(len(targets), dual_lr, restarts=dual_restarts)
        # The last training step's constraint defects, for the multiplier update after the optimiser
        # step: training_step runs inside the optimiser's closure and Lightning hands its outputs to
        # on_train_batch_end only, which also runs between the steps of an accumulated batch.
        self._defects: torch.Tensor | None = None

    def constrained_densities(self) -> torch.Tensor:
        if self.kept is None:
            return super().constrained_densities()
        if self.layerwise:
            return self.kept.layer_densities(self.gated_names)
        return self.kept.model_density().unsqueeze(0)

    @torch.no_grad()
    def deployed_densities(self) -> torch.Tensor:
        """The constrained densities for the test gates: what the purged model will measure."""
        if self.kept is not None:
            if self.layerwise:
                return self.kept.layer_densities(self.gated_names, deployed=True)
            return self.kept.model_density(deployed=True).unsqueeze(0)
        shares = deterministic_gate_densities(self.model)
        values = [shares[name] for name in self.gated_names] if self.layerwise else [shares["model"]]
        return torch.tensor(values, device=self.aims.device)

    def defects(self, densities: torch.Tensor) -> torch.Tensor:
        """``g_j``: the constraints' values, ``<= 0`` where the target is met."""
        if self.relative_constraint:
            return densities / self.aims - 1.0
        return densities - self.aims

    def density_term(self, densities: torch.Tensor) -> torch.Tensor:
        measured = self.deployed_densities() if self.dual_defect == "deployed" else densities
        self._defects = self.defects(measured).detach()
        return self.multipliers.lagrangian_term(self.defects(densities))

    def epoch_figures(self) -> dict[str, float]:
        figures = super().epoch_figures()
        for index, value in enumerate(self.multipliers.values.tolist()):
            figures[f"train/multiplier_{index}" if self.layerwise else "train/multiplier"] = value
        if self.kept is not None:
            with torch.no_grad():
                figures["train/expected_kept_density"] = float(self.kept.model_density())
        return figures

    def after_optimizer_step(self) -> None:
        if self._defects is not None:
            self.multipliers.update(self._defects)

    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        self.trimmed_gates = self.close_gates_over_target() if self.trim_to_target else 0
        return super().finalize(datamodule)

    def close_gates_over_target(self) -> int:
        """Close the weakest open gates of every constraint whose deployed density is above its target."""
        layers = dict(gated_layers(self.model))
        targets = self.target_density if self.layerwise else [self.target_density]
        closed = 0
        for index, target in enumerate(targets):
            names = [self.gated_names[index]] if self.layerwise else self.gated_names
            closed += close_weakest_gates([layers[name].gate for name in names],
                                          lambda index=index: float(self.deployed_densities()[index]), target)
        return closed

    def method_metrics(self) -> dict[str, Any]:
        kept = self.kept or KeptWeights(self.model, self.info.input_shape)
        with torch.no_grad():
            layers = kept.layer_densities(self.gated_names).tolist()
            model = float(kept.model_density())
        return {
            **super().method_metrics(),
            "density_measure": self.density_measure,
            "dual_defect": self.dual_defect,
            "relative_constraint": self.relative_constraint,
            "target_margin": self.target_margin,
            "trim_to_target": self.trim_to_target,
            "trimmed_gates": self.trimmed_gates,
            "expected_kept_density": {"model": model, "layers": dict(zip(self.gated_names, layers))},
            "multipliers": self.multipliers.values.tolist(),
            "dual_lr": self.multipliers.dual_lr,
            "dual_restarts": self.multipliers.restarts,
        }
