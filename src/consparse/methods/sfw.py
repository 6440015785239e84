"""``method=sfw``: compression-aware training with Stochastic Frank-Wolfe (Zimmer, Spiegel, Pokutta 2022).

The network is trained dense by Frank-Wolfe inside norm-ball constraints (k-support, k-sparse,
group-k-support, nuclear, spectral-k-support, Lp) whose vertices are sparse or low-rank, so that
the trained weights concentrate on few entries / filters / singular directions and survive pruning
or low-rank decomposition *without retraining*. Which parameter gets which set, and how big, is
``method.constraint`` (``consparse.optim.constraints.model_constraints``); the update is
``consparse.optim.FrankWolfe``.

The deployed model is the trained network magnitude-pruned (globally) to ``target_density`` when
one is given; with the ``nm`` set (``constraint.kind: nm``, ``constraint.nm: "2:4"``) it is the
trained network N:M-pruned, and ``target_density`` is null or N/M. The shared compression curve (``evaluation.compression_grid``) evaluates
unstructured, filter and low-rank compression of the trained network, all without retraining.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from consparse.compress.nm import nm_prune
from consparse.errors import ParameterError, parameter_prefix
from consparse.methods.base import Deployment
from consparse.methods.frank_wolfe_method import FrankWolfeMethod
from consparse.nm_pattern import NMPattern
from consparse.optim.constraints import ConstrainedGroup, ConstraintSpec, build_model_constraints
from consparse.validation import check_range

# Checkpoint key of the number of groups the start rescaled into their sets (a method metric).
INFEASIBLE_KEY = "sfw_initially_infeasible_groups"


class SFWMethod(FrankWolfeMethod):
    """Frank-Wolfe training in constraint sets; pruning / decomposition afterwards without retraining.

    Args (beside ``SparseMethod``'s):
        constraint: the ``method.constraint`` node (fields of ``ConstraintSpec``: kind, k, scope,
            mode, value, init_norm_samples, init_norm_seed, svd_iterations, table, nm).
        unconstrained_lr: learning rate of the parameters the table leaves unconstrained
            (``none``), which take momentum-SGD steps; null uses the optimiser's lr.
    """

    def __init__(
        self,
        *args: Any,
        constraint: dict[str, Any] | ConstraintSpec | None = None,
        unconstrained_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        with parameter_prefix("constraint"):
            self.constraint_spec = (
                constraint if isinstance(constraint, ConstraintSpec) else ConstraintSpec.from_config(constraint)
            )
        self.nm_pattern = self._deployed_pattern()
        with parameter_prefix("constraint"):
            self.k = self.constraint_spec.resolved_k(self.target_density)
        check_range("unconstrained_lr", unconstrained_lr, 0.0, low_inclusive=False, allow_none=True)
        self.unconstrained_lr = unconstrained_lr
        self.groups: list[ConstrainedGroup] = []
        self.initially_infeasible = 0

    def _deployed_pattern(self) -> NMPattern | None:
        """The N:M pattern of the deployed model (with the nm set), ``target_density`` made N/M."""
        if self.constraint_spec.kind != "nm":
            return None
        pattern = self.constraint_spec.nm
        if self.target_density is None:
            self.target_density = pattern.density
        elif abs(self.target_density - pattern.density) > 1e-9:
            raise ParameterError(
                "target_density",
                f"{self.target_density} disagrees with method.constraint.nm={pattern} (density {pattern.density:g}); "
                f"set method.target_density={pattern.density:g} or null",
            )
        return pattern

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        with parameter_prefix("constraint"):
            self.groups = build_model_constraints(self.model, self.constraint_spec, self.target_density)
        param_groups = [group.as_param_group() for group in self.groups]
        if self.unconstrained_lr is not None:
            for group in param_groups:
                if group["constraint"] is None:
                    group["lr"] = self.unconstrained_lr
        return param_groups

    def configure_optimizers(self) -> Any:
        configured = super().configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        # Runs after the weights are restored on resumption and after DDP's broadcast, so the
        # rescaling is the same on every rank and a no-op on an already feasible iterate: a resumed
        # run adds nothing to the count its checkpoint restored.
        self.initially_infeasible += optimizer.make_feasible_()
        return configured

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[INFEASIBLE_KEY] = self.initially_infeasible

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.initially_infeasible = int(checkpoint.get(INFEASIBLE_KEY, 0))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        gap = self.epoch_gap()
        if gap is not None:
            # Every rank holds the same gap (same reduced gradients); the once-per-epoch mean over
            # ranks changes nothing and keeps Lightning from warning about unsynchronised epoch logs.
            self.log("train/fw_gap", gap, on_step=False, on_epoch=True, sync_dist=True)

    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        if self.nm_pattern is None:
            return super().finalize(datamodule)
        return self.deployment(nm_prune(self.model.eval(), self.nm_pattern))

    # ------------------------------------------------------------------ reporting
    def method_metrics(self) -> dict[str, Any]:
        spec = self.constraint_spec
        metrics: dict[str, Any] = {
            "constraint_kind": spec.kind,
            "k": self.k,
            "scope": spec.scope,
            "mode": spec.mode,
            "value": spec.value,
            "table": dict(spec.table),
            "nm": str(spec.nm) if self.nm_pattern is not None else None,
            "initially_infeasible_groups": self.initially_infeasible,
        }
        if self._trainer is None or not self.groups:
            return metrics
        optimizer = self.frank_wolfe()
        gaps = self.final_gaps()
        metrics.update(
            {
                "optimizer": {
                    key: optimizer.defaults[key]
                    for key in ("momentum", "momentum_form", "rescale", "step_rule")
                },
                "fw_gap": sum(gaps.values()) if gaps else None,
                "fw_gap_per_group": gaps,
                "constraints": {
                    group.name: {**group.constraint.describe(), "feasible": self._feasible(group)}
                    for group in self.groups
                    if group.constraint is not None
                },
                "unconstrained_parameters": [
                    name
                    for group in self.groups
                    if group.constraint is None
                    for name in group.parameter_names
                ],
            }
        )
        return metrics

    @staticmethod
    @torch.no_grad()
    def _feasible(group: ConstrainedGroup) -> bool:
        flat = torch.cat([p.detach().reshape(-1) for p in group.parameters]).reshape(group.constraint.shape)
        return group.constraint.is_feasible(flat)
