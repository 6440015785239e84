"""``method=implicit_fw``: a sparse implicit model trained from (near) zero by Frank-Wolfe.

The idea of Négiar, Mahoney, El Ghaoui, Amos and Defazio ("Training Sparse High Capacity Models with
Implicit Neural Networks and Frank-Wolfe", a BCommons research proposal; no public code or results
exist, this is a first implementation): instead of training a network and compressing it, train
the implicit model ``X = relu(A X + B u), y = C X + D u`` (``model=implicit``) with Frank-Wolfe in
row-wise constraint sets, so that it grows sparse and stays well-posed at every step.

* **Sets.** Every row of ``A`` lies in an L1 ball of radius ``kappa < 1`` (default: the model's
  ``kappa``), so ``||A||_inf <= kappa`` holds for every iterate (each is a convex combination of
  feasible points): well-posed without any projection. Rows of ``B``, ``C``, ``D`` lie in L1 balls
  (or row-wise k-sparse polytopes / k-support balls) whose radii set the capacity; a matrix may be
  ``off`` (kept at zero). The row-wise L1 LMO adds one signed coordinate per row per step.
* **Start.** From exactly zero the states are ``relu(0) = 0`` and ReLU's derivative at 0 is 0, so
  the gradients of ``A``, ``B``, ``C`` vanish and only ``D`` would move (a stationary point). Seeding
  ``C`` does not help (the states stay 0 and the adjoint is masked by the zero derivative); so the
  method zeroes all four matrices (``model.init`` is not used) and seeds ``B``: every row gets one
  random signed entry of ``seed.scale`` times the largest entry its set allows (``r`` for L1 and
  k-support rows, ``tau`` for k-sparse rows; for L1 rows that is a vertex scaled by ``seed.scale``),
  so each state starts as ``relu(+-scale r u_j)`` of one random input feature (not the bias column).
* **Steps.** ``consparse.optim.FrankWolfe``: the sublinear ``2/(t+2)`` rule, momentum SFW with
  gradient rescaling (``step_rule=lr``), or the short step with backtracking (``step_rule=short``,
  one joint line search over A, B, C, D on the current batch), each with Frank-Wolfe or pairwise
  directions (pairwise steps move weight from the worst active atom to the vertex and can drop it).
  Gradients come through the equilibrium by the model's implicit backward.
* **Capacity (target_density).** A stopping rule on growth, ``capacity: model`` (default): the
  model may hold ``N = floor(target_density * size(A, B, C, D))`` nonzeros. While a step cannot
  exceed ``N`` (current nonzeros plus the most one step can add: one per row for L1 rows, ``k`` for
  k-sparse / k-support rows), rows grow freely. Once it could, the ``N - nnz`` free places go to
  the rows with the largest first-order gain of a new entry (radius times the largest ``|grad|``
  off the row's support, summed over ``k`` entries for k-sparse / k-support rows); every other row's
  LMO chooses only among its current support (a per-row ``support_budget``), so Frank-Wolfe goes on
  in the face of the support it has grown. The density never exceeds the target and reaches it
  when training wants more entries; pairwise drop steps reopen room.
  ``capacity: row`` gives each row of each trained matrix its own budget of
  ``floor(target_density * columns)`` nonzeros instead (``support_budget``), which also caps each
  matrix separately. With ``target_density: null`` nothing is capped.

The deployed model is the trained one (exact zeros; no pruning) in its deployed form
(``consparse.models.implicit_deployed``: states in levels, the fixed point only over the states on
cycles of A, sparse kernels where they are faster). Its dense reference is the same implicit model
counted dense (``ImplicitTrainingMethod``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from consparse.data.info import DatasetInfo
from consparse.errors import ParameterError, parameter_prefix
from consparse.methods.base import Deployment
from consparse.methods.frank_wolfe_method import FrankWolfeMethod
from consparse.methods.implicit_training import MATRICES, ImplicitTrainingMethod
from consparse.models.implicit_deployed import DeployedImplicitModel, deploy_implicit, deployment_metrics
from consparse.optim.constraints import RowwiseKSparsePolytope, RowwiseKSupportNormBall, RowwiseL1Ball
from consparse.validation import check_choice, check_known_keys, check_range

SET_KINDS = ("l1", "ksparse", "ksupport", "off")
RowSet = RowwiseL1Ball | RowwiseKSparsePolytope | RowwiseKSupportNormBall
SEED_MATRICES = ("B", "none")
CAPACITIES = ("model", "row")
COUNTERS_KEY = "implicit_fw_counters"
ATOM_COUNTS = ("added", "removed", "max_row_growth")


@dataclass(frozen=True)
class MatrixSet:
    """How one matrix is constrained: ``kind`` (l1, ksparse, ksupport, off), the row ``radius`` and ``k``."""

    kind: str
    radius: float | None = None
    k: float | None = None

    @classmethod
    def from_config(cls, name: str, node: dict[str, Any] | None) -> MatrixSet:
        node = dict(node or {})
        check_known_keys("", node, ("kind", "radius", "k"))
        spec = cls(node.get("kind", "l1"), node.get("radius"), node.get("k"))
        check_choice("kind", spec.kind, SET_KINDS)
        if spec.kind == "off":
            return spec
        if name == "A":
            if spec.kind != "l1":
                raise ParameterError(
                    "kind",
                    f"got {spec.kind!r}; rows of A must lie in L1 balls (||A||_inf <= kappa is what makes "
                    "every iterate well-posed)",
                )
            check_range("radius", spec.radius, 0.0, 1.0, low_inclusive=False,
                        high_inclusive=False, allow_none=True)
        else:
            check_range("radius", spec.radius, 0.0, low_inclusive=False)
        if spec.kind == "l1" and spec.k is not None:
            raise ParameterError("k", "k applies to ksparse and ksupport rows only; leave it null for l1")
        if spec.kind != "l1":
            check_range("k", spec.k, 0.0, low_inclusive=False)
        return spec

    def build(self, shape: torch.Size, radius: float, budget: float | None) -> RowSet:
        if self.kind == "l1":
            return RowwiseL1Ball(shape, radius, support_budget=budget)
        if self.kind == "ksparse":
            return RowwiseKSparsePolytope(shape, radius, k=self.k, support_budget=budget)
        return RowwiseKSupportNormBall(shape, radius, k=self.k, support_budget=budget)


class ImplicitFWMethod(FrankWolfeMethod, ImplicitTrainingMethod):
    """Frank-Wolfe training of an implicit model in row-wise sets (see the module docstring).

    Args:
        model: an ``ImplicitModel`` (``model=implicit``).
        info: the dataset's description.
        target_density: the density the capacity rule holds the model at or below, or null.
        capacity: ``model`` (one budget of nonzeros over A, B, C, D; growth stops when a step could
            exceed it) or ``row`` (each row keeps at most ``target_density`` of its columns).
        constraints: ``{A: {kind, radius}, B: {kind, radius, k}, C: ..., D: ...}``; ``A`` must be
            ``l1`` with radius in (0, model.kappa] (null: model.kappa) or ``off``.
        seed: ``{matrix: B | none, scale in (0, 1]}``: the seed entry of each row of B is ``scale`` times its radius.
        optimizer: a ``consparse.optim.FrankWolfe`` partial.
        **kwargs: ``SparseMethod``'s (``scheduler``, ``scheduler_interval``, ``label_smoothing``).
    """

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        target_density: float | None = 0.1,
        capacity: str = "model",
        constraints: dict[str, dict[str, Any]] | None = None,
        seed: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, info, target_density=target_density, **kwargs)
        check_choice("capacity", capacity, CAPACITIES)
        self.capacity = capacity
        constraints = dict(constraints or {})
        unknown = sorted(set(constraints) - set(MATRICES))
        if unknown:
            raise ParameterError("constraints", f"unknown matrices {unknown}; allowed: A, B, C, D")
        self.specs = {name: _matrix_set(name, constraints.get(name)) for name in MATRICES}
        kappa = self.implicit.kappa
        a_radius = self.specs["A"].radius
        if a_radius is not None and a_radius > kappa:
            raise ParameterError(
                "constraints.A.radius", f"got {a_radius}; must not exceed model.kappa={kappa} (the well-posedness radius)"
            )
        with parameter_prefix("seed"):
            self.seed_spec = _seed_spec(seed)
        if self.seed_spec["matrix"] == "B" and self.specs["B"].kind == "off":
            raise ParameterError("seed.matrix", "cannot seed B when method.constraints.B.kind is off")
        self.sets: dict[str, RowSet] = {}
        for name, spec in self.specs.items():
            if spec.kind == "off":
                continue
            radius = a_radius if name == "A" and a_radius is not None else (kappa if name == "A" else spec.radius)
            row_budget = target_density if capacity == "row" else None
            self.sets[name] = spec.build(self.matrix(name).shape, radius, row_budget)
        if not self.sets:
            raise ParameterError("constraints", "every matrix is off; train at least one of A, B, C, D")
        size = sum(self.matrix(name).numel() for name in MATRICES)
        self.budget = int(target_density * size) if target_density is not None and capacity == "model" else None
        # The most nonzeros one step can add: one vertex per row of every trained matrix.
        self.max_growth = sum(s.rows * s.atoms_per_row for s in self.sets.values())
        self.frozen_steps = 0
        self.first_frozen_step: int | None = None
        # Atoms added, removed, and the most one row gained in a step: counted on the device, read
        # back only when reported.
        self.register_buffer("_atom_counts", torch.zeros(3, dtype=torch.long), persistent=False)
        # Fails here, before any data is read, on a bad optimiser setting (the real one is built by Lightning).
        with parameter_prefix("optimizer"):
            self.optimizer_factory(self.parameter_groups())
        self._start_from_seed()
        self._evaluations = 0.0
        self._line_searches = 0
        # The current batch, for the short step's trial losses (batch_loss): Lightning calls
        # optimizer_step without the batch, and training_step runs inside the step's closure.
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ counters
    @property
    def atoms(self) -> dict[str, int]:
        """Atoms added and removed over training, and the most any row gained in one step."""
        return dict(zip(ATOM_COUNTS, self._atom_counts.tolist()))

    @atoms.setter
    def atoms(self, counts: dict[str, int]) -> None:
        self._atom_counts.copy_(torch.tensor([int(counts[name]) for name in ATOM_COUNTS]))

    # ------------------------------------------------------------------ start
    @torch.no_grad()
    def _start_from_seed(self) -> None:
        """Zero A, B, C, D, then put one random signed entry of ``scale`` times the row's radius in every row of B."""
        for name in MATRICES:
            self.matrix(name).zero_()
            if name not in self.sets:
                self.matrix(name).requires_grad_(False)
        if self.seed_spec["matrix"] == "none":
            return
        B = self.implicit.B
        rows = B.shape[0]
        features = self.implicit.input_size  # not the bias column: a constant state carries no signal
        columns = torch.randint(0, features, (rows,))
        signs = torch.randint(0, 2, (rows,)).to(B.dtype) * 2 - 1
        radius = self.sets["B"].radius.to(B.dtype)
        B[torch.arange(rows), columns] = signs * self.seed_spec["scale"] * radius

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.matrix(name)], "constraint": constraint, "name": name}
                for name, constraint in self.sets.items()]

    def supports(self) -> dict[str, torch.Tensor]:
        """The nonzero pattern of every trained matrix."""
        return {name: self.matrix(name).detach() != 0 for name in self.sets}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        self._batch = batch
        # The supports before this step's update: on_train_batch_end counts the atoms it added and removed.
        return {**super().training_step(batch, batch_idx), "support_before": self.supports()}

    @torch.no_grad()
    def batch_loss(self) -> torch.Tensor:
        """The training loss on the current batch at the current weights (the short step's trial points);
        averaged over DDP ranks so that every rank accepts the same step."""
        assert self._batch is not None
        x, y = self._batch
        loss = self.loss(self.model(x), y)
        if self._trainer is not None and self.trainer.world_size > 1:
            loss = self.trainer.strategy.reduce(loss, reduce_op="mean")
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        optimizer.step(closure=optimizer_closure, evaluate=self.batch_loss)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.budget is not None:
            self._allocate_budget(self.supports())

    @torch.no_grad()
    def _allocate_budget(self, supports: dict[str, torch.Tensor]) -> None:
        """Per-row budgets for this step under ``capacity: model`` (module docstring).

        Reads one number back per step, the room left: while it is at least what one step can add,
        the allocation is skipped. Deciding on the device instead (granting every row its full width
        then) costs a top-k and a sort over every row at every step, a large part of a small model's
        step on the CPU; on a GPU the step reads back each fixed-point iteration's convergence anyway.
        """
        room = int(self.budget - torch.stack([support.sum() for support in supports.values()]).sum())
        if room >= self.max_growth:
            for constraint in self.sets.values():
                constraint.support_budget = None
            return
        self.frozen_steps += 1
        if self.first_frozen_step is None:
            self.first_frozen_step = int(self.global_step)
        names = list(self.sets)
        gains, widths = [], []
        for name in names:
            constraint, grad = self.sets[name], self.matrix(name).grad
            width = constraint.atoms_per_row
            outside = torch.zeros_like(supports[name], dtype=torch.float32) if grad is None else (
                torch.where(supports[name], 0.0, grad.detach().abs()).float()
            )
            gains.append(torch.topk(outside, width, dim=1).values.sum(dim=1) * constraint.radius.to(outside.device))
            widths.append(torch.full((constraint.rows,), width, dtype=torch.long, device=outside.device))
        gain, width = torch.cat(gains), torch.cat(widths)
        order = torch.argsort(gain, descending=True)
        # Rows in order of gain take their width of the free places until none are left.
        granted_before = torch.cumsum(width[order], dim=0) - width[order]
        grant = torch.zeros_like(width)
        grant[order] = (max(room, 0) - granted_before).clamp(min=0).minimum(width[order])
        for name, row_grant in zip(names, torch.split(grant, [self.sets[n].rows for n in names])):
            self.sets[name].support_budget = supports[name].sum(dim=1) + row_grant

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._count_atoms(outputs["support_before"])
        optimizer = self.frank_wolfe()
        if optimizer.last_line_search:
            self._evaluations += optimizer.last_line_search["evaluations"]
            self._line_searches += 1

    def _count_atoms(self, supports_before: dict[str, torch.Tensor]) -> None:
        counts = self._atom_counts
        for name, before in supports_before.items():
            now = self.matrix(name).detach() != 0
            new = now & ~before
            counts[0] += new.sum()
            counts[1] += (before & ~now).sum()
            counts[2] = torch.maximum(counts[2], new.sum(dim=1).max())

    def epoch_figures(self) -> dict[str, float]:
        figures = super().epoch_figures()
        gap = self.epoch_gap()
        if gap is not None:
            figures["train/fw_gap"] = float(gap)
        figures["train/atoms_added"] = float(self.atoms["added"])
        figures["train/atoms_removed"] = float(self.atoms["removed"])
        return figures

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[COUNTERS_KEY] = {
            "atoms": dict(self.atoms),
            "frozen_steps": self.frozen_steps,
            "first_frozen_step": self.first_frozen_step,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(COUNTERS_KEY)
        if saved is not None:
            self.atoms = saved["atoms"]
            self.frozen_steps = int(saved["frozen_steps"])
            self.first_frozen_step = saved["first_frozen_step"]

    # ------------------------------------------------------------------ the method seam
    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        """The trained model in deployed form: the support budget already holds the density at or below the target."""
        deployed = deploy_implicit(self.implicit.eval())
        return Deployment(deployed, self.model, self.model, functools.partial(self.method_metrics, deployed))

    def method_metrics(self, deployed: DeployedImplicitModel | None = None) -> dict[str, Any]:
        """The figures of ``ImplicitTrainingMethod`` and the Frank-Wolfe training's, with ``deployed``'s structure."""
        metrics = super().method_metrics()
        metrics.update(
            {
                "capacity": self.capacity if self.target_density is not None else None,
                "budget_nonzeros": self.budget,
                "max_growth_per_step": self.max_growth,
                "frozen_steps": self.frozen_steps,
                "first_frozen_step": self.first_frozen_step,
                "support_budget_per_row": {name: s.support_budget for name, s in self.sets.items()}
                if self.capacity == "row" and self.target_density is not None
                else None,
                "constraints": {
                    name: {**constraint.describe(), "feasible": constraint.is_feasible(self.matrix(name).detach())}
                    for name, constraint in self.sets.items()
                },
                "off_matrices": [name for name in MATRICES if name not in self.sets],
                "seed": dict(self.seed_spec),
                "atoms": dict(self.atoms),
            }
        )
        if deployed is not None:
            metrics["deployed"] = deployment_metrics(deployed)
        if self._trainer is None:
            return metrics
        optimizer = self.frank_wolfe()
        gaps = self.final_gaps()
        metrics["optimizer"] = {
            key: optimizer.defaults[key] for key in ("lr", "momentum", "momentum_form", "rescale", "step_rule", "direction")
        }
        metrics["fw_gap"] = sum(gaps.values()) if gaps else None
        metrics["fw_gap_per_matrix"] = gaps
        if self._line_searches:
            metrics["line_search"] = {
                "lipschitz": optimizer.last_line_search["lipschitz"],
                "mean_evaluations_per_step": self._evaluations / self._line_searches,
            }
        return metrics


def _matrix_set(name: str, node: dict[str, Any] | None) -> MatrixSet:
    with parameter_prefix(f"constraints.{name}"):
        return MatrixSet.from_config(name, node)


def _seed_spec(seed: dict[str, Any] | None) -> dict[str, Any]:
    node = {"matrix": "B", "scale": 0.1, **dict(seed or {})}
    check_known_keys("", node, ("matrix", "scale"))
    if node["matrix"] == "C":
        raise ParameterError(
            "matrix",
            "seeding C does not start training: with B = 0 the states are relu(0) = 0 and ReLU's derivative "
            "there is 0, so no gradient reaches A or B; seed B",
        )
    check_choice("matrix", node["matrix"], SEED_MATRICES)
    check_range("scale", node["scale"], 0.0, 1.0, low_inclusive=False)
    return node
