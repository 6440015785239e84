"""``method=implicit_lasso``: sparsify a trained network by state matching with a constrained LASSO.

Tsai, Gao & El Ghaoui, "Constrained Implicit Learning Framework for Neural Network Sparsification"
(ACML 2024, PMLR 260). The teacher is trained by the normal ``Trainer.fit`` (or loaded from
``teacher_checkpoint``, and then not trained). ``finalize`` then

1. extracts the teacher's states on ``data_fraction`` of the training data;
2. converts it exactly: a Linear/ReLU chain into an implicit model ``(A, B, C, D)`` with every
   row of ``[A B]`` rescaled into the ``conversion_kappa`` ball (``formulation: implicit``), a conv
   net layer by layer (``formulation: layerwise``, ``consparse.methods.implicit_lasso.layerwise``),
   a transformer's classification head on its features (``formulation: head``,
   ``consparse.methods.implicit_lasso.head``);
3. refits every row by the constrained LASSO ``min 1/2 ||M w - z||^2 s.t. ||w||_1 <= kappa`` (the
   whole row, or only its part on the states with ``constrain: A``), all rows at once, split across
   DDP ranks and gathered; ``kappa`` is an absolute radius in the units of the converted,
   well-posed model (the paper's 0.005 to 0.99: at ``kappa >= conversion_kappa`` the teacher's own
   rows fit);
4. refits the read-out ``(C, D)`` (or the classifier) on states regenerated from the new rows, with
   the teacher's logits as targets; the result is the deployed model (the paper's one shot);
5. beyond the paper, with ``finetune_epochs > 0`` (``formulation: implicit``): trains the refitted
   model's nonzero entries for that many epochs on the training data, support fixed (or, with
   ``finetune_regrow``, each matrix's count of nonzeros fixed and their places moved) and ``A``
   kept well-posed (``consparse.methods.implicit_lasso.finetune``); the one-shot accuracy is
   reported beside the fine-tuned one.

With ``target_density`` set, ``kappa`` is only the first guess of an outer search for the radius
whose deployed model meets the density (nonzero sparsifiable weights over the teacher's, as every
method is measured). The deployment's dense reference is the teacher.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from consparse.checkpoint_io import CheckpointError, load_checkpoint
from consparse.compress.count import density, nonzero_count, numel_count, sparsifiable_weights
from consparse.compress.evaluate import evaluate_accuracy
from consparse.compress.export import ExportError, load_exported
from consparse.errors import ParameterError, parameter_prefix
from consparse.implicit.convert import linear_relu_chain
from consparse.implicit.solvers import FixedPointSettings
from consparse.lasso.debias import debias_rows
from consparse.lasso.solution import ConstrainedLassoSolution
from consparse.lasso.solvers import solver_settings
from consparse.methods.base import Deployment, SparseMethod
from consparse.methods.implicit_lasso.finetune import FinetuneSettings, finetune_on_support
from consparse.methods.implicit_lasso.head import HeadStateMatching, has_head
from consparse.methods.implicit_lasso.kappa_search import DensitySearchSettings, search_kappa
from consparse.methods.implicit_lasso.layerwise import LayerwiseStateMatching, check_layerwise
from consparse.methods.implicit_lasso.matching import MatchingSettings, StateMatching
from consparse.methods.implicit_lasso.readout import ReadoutSettings
from consparse.methods.implicit_lasso.refit import RowSolver
from consparse.methods.implicit_lasso.state_matching import ImplicitStateMatching
from consparse.models.implicit import NONCONVERGENCE_POLICIES, ImplicitModel
from consparse.models.implicit_deployed import DeployedImplicitModel, deploy_implicit, deployment_metrics
from consparse.validation import check_choice, check_int, check_range, settings_from

log = logging.getLogger(__name__)

FORMULATIONS = ("auto", "implicit", "layerwise", "head")
FORMULATION_CLASSES = {"implicit": ImplicitStateMatching, "layerwise": LayerwiseStateMatching, "head": HeadStateMatching}

def _settings(cls: type, values: dict[str, Any] | None, name: str) -> Any:
    """A frozen settings dataclass from the config node ``name``; unknown keys and bad values name the key."""
    with parameter_prefix(name):
        settings = settings_from(cls, values)
        settings.validate()
    return settings


def _fixed_point_options(values: dict[str, Any] | None) -> dict[str, Any]:
    options = dict(values or {})
    policy = options.pop("on_nonconvergence", "error")
    check_choice("fixed_point.on_nonconvergence", policy, NONCONVERGENCE_POLICIES)
    _settings(FixedPointSettings, options, "fixed_point")
    return {**options, "on_nonconvergence": policy}


def load_teacher(model: nn.Module, path: str) -> Path:
    """Load trained weights into ``model`` from a consparse checkpoint or export; returns the file read.

    Accepted: a Lightning checkpoint (``<run>/checkpoints/last.ckpt``, keys ``model.*``), a run or
    export directory (``export/model.json`` + ``model.safetensors``), or a file holding a state_dict.
    """
    key = "teacher_checkpoint"
    candidate = Path(path).expanduser()
    if not candidate.exists():
        raise ParameterError(key, f"{candidate} does not exist; give a run's checkpoints/last.ckpt, its export directory or a state_dict file")
    if candidate.is_dir() and (candidate / "checkpoints" / "last.ckpt").is_file():
        candidate = candidate / "checkpoints" / "last.ckpt"
    if candidate.is_dir():
        try:
            state = load_exported(candidate).state_dict()
        except ExportError as error:
            raise ParameterError(key, str(error)) from None
    else:
        try:
            loaded = load_checkpoint(candidate)
        except CheckpointError as error:
            raise ParameterError(key, str(error)) from None
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
        if not isinstance(state, dict):
            raise ParameterError(key, f"{candidate} holds no state_dict")
        if state and all(key.startswith("model.") for key in state):
            state = {key[len("model."):]: value for key, value in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ParameterError(key, f"the weights in {candidate} do not fit the configured model: {error}") from None
    return candidate


def _implicit_part(model: nn.Module | None, kind: type[nn.Module]) -> Any:
    """The implicit model of type ``kind`` in ``model``: the model itself, or a transformer's refitted head."""
    if isinstance(model, kind):
        return model
    head = getattr(model, "head", None)
    return head if isinstance(head, kind) else None


def _deployed_density(model: nn.Module, teacher: nn.Module) -> float:
    """``density`` of ``model`` as it will be deployed and measured: the deployed form drops the
    states the output never reads (``consparse.implicit.structure.plan_states``), with their rows
    and columns, so the search meets the target on the density the run reports."""
    implicit = _implicit_part(model, ImplicitModel)
    if implicit is None:
        return density(model, teacher)
    kept = nonzero_count(sparsifiable_weights(deploy_implicit(implicit, formats="dense")))
    dropped = nonzero_count(sparsifiable_weights(implicit)) - kept
    return density(model, teacher) - dropped / numel_count(sparsifiable_weights(teacher))


class ImplicitLassoMethod(SparseMethod):
    """Train (or load) a teacher, then sparsify it by constrained-LASSO state matching in ``finalize``.

    Args (beside SparseMethod's; the config keys of ``conf/method/implicit_lasso.yaml``):
        teacher_checkpoint: trained weights to start from (then no training), or None to train.
        kappa: the absolute L1 radius of every row of ``[A B]`` in the converted, well-posed model
            (each layer rescaled so that its largest row has norm ``conversion_kappa``, the paper's
            convention), in (0, 1); ``kappa >= conversion_kappa`` admits the teacher's own rows.
            Layer-wise, the same radius in the same units: each layer rescaled on its own so that
            its largest (BatchNorm-folded) row has norm ``conversion_kappa``, i.e. a radius of
            ``kappa / conversion_kappa`` times that row's norm in the network's units. The first
            guess of the search when ``target_density`` is set.
        conversion_kappa: largest row L1 norm of each layer after the exact rescaling, in (0, 1).
        constrain: ``row`` or ``A``.
        formulation: ``implicit`` (Linear/ReLU chains), ``layerwise`` (conv nets), ``head`` (a
            transformer's classification head) or ``auto``.
        data_fraction: share of the training split the states are extracted on, in (0, 1].
        extraction_batch_size: batch of the extraction and regeneration passes (fixed, so that the
            statistics do not depend on the DDP world size).
        solver: the constrained-LASSO solver (``step``) and its settings
            (``consparse.lasso.solvers.solver_settings``), plus ``row_batch`` (rows per chunk).
        readout: ``ReadoutSettings`` keys.
        density_search: ``DensitySearchSettings`` keys.
        fixed_point: solver options of the deployed implicit model (``ImplicitModel`` keywords).
        debias: refit each row's free coordinates by least squares on its support
            (``consparse.lasso.debias``; beyond the paper, off by default).
        finetune_epochs: epochs of training on the fixed support after the refit (0: the paper's
            one shot); ``formulation: implicit`` only.
        finetune_lr: Adam's learning rate of that fine-tuning, relative to each matrix's typical entry
            (the root mean square of its nonzeros).
        finetune_regrow: share of each matrix's nonzeros moved to the largest gradients at the first
            regrowth (RigL's drop and grow, cosine-decayed); 0 keeps the support fixed.
        finetune_regrow_every: steps between regrowths.
    """

    def __init__(
        self,
        *args: Any,
        teacher_checkpoint: str | None = None,
        kappa: float = 0.05,
        conversion_kappa: float = 0.95,
        constrain: str = "row",
        formulation: str = "auto",
        data_fraction: float = 0.2,
        extraction_batch_size: int = 500,
        solver: dict[str, Any] | None = None,
        readout: dict[str, Any] | None = None,
        density_search: dict[str, Any] | None = None,
        fixed_point: dict[str, Any] | None = None,
        debias: bool = False,
        finetune_epochs: int = 0,
        finetune_lr: float = 1.0e-2,
        finetune_regrow: float = 0.0,
        finetune_regrow_every: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_range("kappa", kappa, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_range("data_fraction", data_fraction, 0.0, 1.0, low_inclusive=False)
        check_int("extraction_batch_size", extraction_batch_size, 1)
        check_choice("formulation", formulation, FORMULATIONS)
        check_choice("debias", debias, [True, False])
        self.debias = debias
        solver = dict(solver or {})
        self.row_batch = solver.pop("row_batch", 128)
        check_int("solver.row_batch", self.row_batch, 1)
        with parameter_prefix("solver"):
            self.solver_settings = solver_settings(solver)
        self.density_search = _settings(DensitySearchSettings, density_search, "density_search")
        self.matching = MatchingSettings(
            conversion_kappa=conversion_kappa,
            constrain=constrain,
            readout=_settings(ReadoutSettings, readout, "readout"),
            fixed_point=_fixed_point_options(fixed_point),
        )
        self.matching.validate()
        self.kappa = float(kappa)
        self.data_fraction = float(data_fraction)
        self.extraction_batch_size = extraction_batch_size
        self.formulation = self._resolve_formulation(formulation)
        self.finetune = FinetuneSettings(finetune_epochs, finetune_lr, finetune_regrow, finetune_regrow_every)
        self.finetune.validate()
        if self.finetune.epochs and self.formulation != "implicit":
            raise ParameterError("finetune_epochs", f"fine-tuning needs formulation implicit (a Linear/ReLU chain), "
                              f"this run is {self.formulation}; set method.finetune_epochs=0")
        self.teacher_checkpoint = str(load_teacher(self.model, teacher_checkpoint)) if teacher_checkpoint else None

    def _resolve_formulation(self, formulation: str) -> str:
        if formulation in ("auto", "head") and has_head(self.model):
            linear_relu_chain(self.model.head)
            return "head"
        if formulation == "head":
            raise ParameterError("formulation", "formulation head needs a model with an encoder and a head (model=distilbert)")
        if formulation in ("auto", "implicit"):
            try:
                linears = linear_relu_chain(self.model)
            except ParameterError:
                if formulation == "implicit":
                    raise
            else:
                if len(linears) < 2:
                    raise ParameterError("model.hidden", "the network has no hidden layer, so there are no states to sparsify")
                return "implicit"
        check_layerwise(self.model)
        return "layerwise"

    # ------------------------------------------------------------------ training the teacher
    def on_fit_start(self) -> None:
        if self.teacher_checkpoint is not None:
            log.info("teacher loaded from %s: no training", self.teacher_checkpoint)
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ finalize
    def finalize(self, datamodule: pl.LightningDataModule) -> Deployment:
        teacher = self.model.eval()
        device = self.device
        teacher_dtype = next(teacher.parameters()).dtype
        metrics = self._settings_metrics()
        metrics["teacher_accuracy"] = evaluate_accuracy(teacher, datamodule.test_dataloader(), device)
        datamodule.setup()
        samples = max(1, math.ceil(self.data_fraction * len(datamodule.train_eval_set)))
        loader = datamodule.train_eval_dataloader(samples, self.extraction_batch_size)

        start = time.perf_counter()
        matcher: StateMatching = FORMULATION_CLASSES[self.formulation](
            teacher, loader, datamodule.info.input_shape, self.matching, device)
        metrics["extraction_seconds"] = time.perf_counter() - start
        solver = RowSolver(matcher.blocks, self.row_batch, self.solver_settings)
        log.info("state matching: %d rows on %d samples (extraction %.1f s); solving the constrained LASSO",
                 solver.rows, matcher.samples, metrics["extraction_seconds"])
        evaluations: list[dict[str, Any]] = []

        def evaluate(kappa: float) -> tuple[float, tuple[nn.Module, list[ConstrainedLassoSolution]]]:
            solutions = solver.solve(matcher.radii(kappa))
            started = time.perf_counter()
            if self.debias:
                for block, solution in zip(matcher.blocks, solutions):
                    solution.weights = debias_rows(block.problem, solution.weights.to(block.problem.gram.device), block.free).cpu()
            model = matcher.build(solutions, kappa)
            achieved = _deployed_density(model, teacher)
            evaluations.append({"kappa": kappa, "density": achieved, "solve_seconds": solver.seconds,
                                "build_seconds": time.perf_counter() - started})
            # The state matching runs for minutes with no Trainer progress bar: say what it does.
            log.info("state matching: kappa %.4g -> density %.4f%s, %d rows solved in %.1f s", kappa, achieved,
                     "" if self.target_density is None else f" (target {self.target_density})", solver.rows, solver.seconds)
            return achieved, (model, solutions)

        if self.target_density is None:
            kappa = self.kappa
            _, (model, solutions) = evaluate(kappa)
        else:
            result = search_kappa(evaluate, self.target_density, self.kappa, self.density_search)
            kappa, (model, solutions) = result.kappa, result.payload
            metrics["density_search"] = {"met": result.met, "evaluations": len(result.history),
                                         "history": [[k, d] for k, d in result.history]}
        chosen = next(item for item in reversed(evaluations) if item["kappa"] == kappa)
        metrics.update(
            kappa=kappa,
            samples=matcher.samples,
            solve_seconds=chosen["solve_seconds"],
            build_seconds=chosen["build_seconds"],
            solve_seconds_total=sum(item["solve_seconds"] for item in evaluations),
            row_ranks=solver.world_size,
            **self._row_metrics(solutions, matcher.radii(kappa), matcher.hidden_parameters),
            chunks=len(solver.chunks),
            **matcher.metrics(),
        )
        return self._deploy(model.to(dtype=teacher_dtype).eval(), teacher, datamodule, metrics)

    def _settings_metrics(self) -> dict[str, Any]:
        """What the refit was asked to do, as its method metrics start."""
        return {
            "formulation": self.formulation,
            "conversion_kappa": self.matching.conversion_kappa,
            "constrain": self.matching.constrain,
            "data_fraction": self.data_fraction,
            "teacher_checkpoint": self.teacher_checkpoint,
        }

    def _deploy(self, model: nn.Module, teacher: nn.Module, datamodule: pl.LightningDataModule,
                metrics: dict[str, Any]) -> Deployment:
        """Fine-tune the refitted model if asked, then hand over its fast implicit form."""
        metrics["finetune"] = self._finetune(model, datamodule, self.device) if self.finetune.epochs else {"ran": False}
        implicit = _implicit_part(model, ImplicitModel)
        if implicit is not None:
            metrics["well_posedness"] = implicit.well_posedness()
            if implicit is model:
                model = deploy_implicit(implicit)
            else:
                model.head = deploy_implicit(implicit)
        return Deployment(model, teacher, teacher, functools.partial(_reported_metrics, metrics, model))

    def _finetune(self, model: ImplicitModel, datamodule: pl.LightningDataModule, device: torch.device) -> dict[str, Any]:
        """Fine-tune ``model`` in place on its support; the one-shot and fine-tuned test accuracies."""
        test = datamodule.test_dataloader()
        one_shot = evaluate_accuracy(model, test, device)
        started = time.perf_counter()
        statistics = finetune_on_support(model, datamodule.train_dataloader(), self.finetune, device)
        model.eval()
        finetuned = evaluate_accuracy(model, test, device)
        log.info("fine-tuning on the support: %d epochs, test accuracy %.4f -> %.4f", self.finetune.epochs, one_shot, finetuned)
        return {"ran": True, "epochs": self.finetune.epochs, "lr": self.finetune.lr, "regrow": self.finetune.regrow,
                "regrow_every": self.finetune.regrow_every, "one_shot_accuracy": one_shot,
                "finetuned_accuracy": finetuned, **statistics.as_dict(), "seconds": time.perf_counter() - started}

    @staticmethod
    def _row_metrics(solutions: list[ConstrainedLassoSolution], radii: list[torch.Tensor], hidden_parameters: int) -> dict[str, Any]:
        """The LASSO's bookkeeping over every refitted row (the blocks may differ in width)."""

        def joined(name: str) -> torch.Tensor:
            return torch.cat([getattr(solution, name).cpu() for solution in solutions])

        names = ("active", "on_sphere", "exhausted", "fallback", "steps", "knots", "kkt", "norm")
        everything = SimpleNamespace(**{name: joined(name) for name in names})
        radius = torch.cat([part.cpu() for part in radii]).to(everything.norm)
        nonzeros = nonzero_count([solution.weights for solution in solutions])
        return {
            "rows": int(everything.norm.numel()),
            "rows_active": int(everything.active.sum()),
            "rows_on_sphere": int(everything.on_sphere.sum()),
            "rows_exhausted": int(everything.exhausted.sum()),
            "rows_fallback": int(everything.fallback.sum()),
            "lasso_steps": int(everything.steps.sum()),
            "lasso_knots": int(everything.knots.sum()),
            "lasso_knots_max": int(everything.knots.max()) if everything.knots.numel() else 0,
            "max_kkt_violation": float(everything.kkt.max()) if everything.kkt.numel() else 0.0,
            "max_norm_over_radius": float((everything.norm / radius).max()) if radius.numel() else 0.0,
            "row_nonzeros": nonzeros,
            "hidden_parameters": hidden_parameters,
            "row_sparsity": 1.0 - nonzeros / hidden_parameters,
        }



def _reported_metrics(metrics: dict[str, Any], deployed: nn.Module) -> dict[str, Any]:
    """``finalize``'s figures and, for an implicit ``deployed`` (or head), its structure and solves."""
    metrics = dict(metrics)
    fast = _implicit_part(deployed, DeployedImplicitModel)
    if fast is not None:
        # Every forward since finalize: the test evaluation and the latency runs.
        metrics["fixed_point"] = fast.fixed_point_summary()
        metrics["deployed"] = deployment_metrics(fast)
    return metrics
