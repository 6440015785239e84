"""Layer-wise state matching for networks that are not Linear/ReLU chains (lenet5, resnet20, ...).

The implicit form of a conv net is a huge, structured ``A`` (188,416 states for ResNet-20 on
CIFAR; docs/reference implicit-models.md section 2.2), so its rows cannot be refitted against a
dense design. Here every Conv2d / Linear layer before the classifier is a block of rows: each
output channel is one row, fitted on that layer's input patches (one sample per image and output
position, so a row's weights stay shared across positions) against the teacher's pre-activation
(the output of the BatchNorm that follows the layer, if any, folded in). The rows keep the block
structure of the network: a row only sees its own layer's receptive field, never other layers'
states or the raw input. Each layer treats its input patches as the ``U`` of its own block and is
rescaled on its own so that its largest (folded) row has L1 norm ``conversion_kappa``, as the
implicit form does; ``kappa`` is the absolute radius of every row in those units, so in the
network's units a row's radius is ``kappa / conversion_kappa`` times the largest L1 norm of the
teacher's rows of that layer, the bias counted with ``constrain: row`` and left out with
``constrain: A``.
All layers are fitted on the teacher's inputs (independently, so the rows of every layer can be
split across ranks), then the classifier is refitted on the features the sparsified network
produces, with the teacher's logits as targets.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from consparse.errors import ParameterError
from consparse.lasso.solution import ConstrainedLassoSolution
from consparse.lasso.statistics import GramAccumulator
from consparse.methods.implicit_lasso.matching import DTYPE, MatchingSettings
from consparse.methods.implicit_lasso.readout import fit_readout
from consparse.methods.implicit_lasso.refit import RowBlock

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Unit:
    """One refitted layer: the module, the BatchNorm folded into it, and the teacher's folded rows."""

    name: str
    module: nn.Conv2d | nn.Linear
    norm_name: str | None
    norm: nn.modules.batchnorm._BatchNorm | None
    weight: torch.Tensor  # rows x (fan-in), folded
    bias: torch.Tensor | None  # rows, folded; None when the layer cannot hold a bias

    @property
    def features(self) -> int:
        return self.weight.shape[1] + int(self.bias is not None)


def check_layerwise(model: nn.Module) -> None:
    """Raise ParameterError for layers the layer-wise form cannot refit (before any compute)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.Conv2d):
            raise ParameterError("formulation", f"layer-wise state matching fits Conv2d and Linear layers; '{name}' is {type(module).__name__}")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise ParameterError("formulation", f"layer-wise state matching needs groups=1 and zero padding; '{name}' has groups={module.groups}, padding_mode={module.padding_mode}")
        if isinstance(module, _NORMS) and not module.track_running_stats:
            raise ParameterError("formulation", f"BatchNorm '{name}' has no running statistics to fold")
    if not any(isinstance(module, nn.Linear) for module in model.modules()):
        raise ParameterError("formulation", "layer-wise state matching needs a Linear classifier at the end of the network")


def patches(module: nn.Conv2d | nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """The layer's input as one row per (sample, output position): ``(samples * positions, fan-in)``."""
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, module.in_features)
    unfolded = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
    return unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])


def _rows_of(outputs: torch.Tensor) -> torch.Tensor:
    """``(samples, channels, ...)`` -> ``(samples * positions, channels)``, the order ``patches`` uses."""
    if outputs.dim() == 2:
        return outputs
    return outputs.flatten(2).transpose(1, 2).reshape(-1, outputs.shape[1])


class LayerwiseStateMatching:
    """Layer-wise state matching of a conv net (``formulation: layerwise``; see the module doc).

    Args as for ``consparse.methods.implicit_lasso.state_matching.ImplicitStateMatching``.
    """

    formulation = "layerwise"

    def __init__(
        self,
        teacher: nn.Module,
        loader: Iterable[Any],
        input_shape: Sequence[int],
        settings: MatchingSettings,
        device: torch.device,
    ) -> None:
        check_layerwise(teacher)
        self.teacher = teacher
        self.loader = loader
        self.settings = settings
        self.device = device
        self.dtype = next(teacher.parameters()).dtype
        self.units, self.classifier_name = self._trace(torch.zeros(1, *input_shape, dtype=self.dtype, device=device))
        self.hidden_parameters = sum(unit.weight.numel() + (unit.bias.numel() if unit.bias is not None else 0) for unit in self.units)
        statistics = [GramAccumulator(unit.features, unit.weight.shape[0], DTYPE, device) for unit in self.units]
        modules = dict(teacher.named_modules())

        def record(position: int, unit: Unit) -> list[Any]:
            captured: dict[str, torch.Tensor] = {}

            def take_input(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                captured["design"] = self._design(unit, args[0])

            def take_target(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
                statistics[position].add(captured.pop("design"), _rows_of(output))

            target_module = modules[unit.norm_name] if unit.norm_name else unit.module
            return [unit.module.register_forward_pre_hook(take_input), target_module.register_forward_hook(take_target)]

        handles = [handle for position, unit in enumerate(self.units) for handle in record(position, unit)]
        try:
            with torch.no_grad():
                for inputs, _ in loader:
                    teacher(inputs.to(device=device, dtype=self.dtype))
        finally:
            for handle in handles:
                handle.remove()
        self.samples = statistics[0].samples if statistics else 0
        self.blocks = [
            RowBlock(unit.name, accumulator.problem(), self._mask(unit)) for unit, accumulator in zip(self.units, statistics)
        ]

    # ------------------------------------------------------------------ structure
    def _trace(self, sample: torch.Tensor) -> tuple[list[Unit], str]:
        """The Conv2d/Linear layers in call order, each with the BatchNorm that reads its output."""
        calls: list[tuple[str, nn.Module]] = []
        outputs: dict[int, str] = {}
        alive: list[torch.Tensor] = []  # holding the outputs keeps their ids from being reused
        norms: dict[str, str] = {}
        handles = []

        def layer_hook(name: str):
            def hook(module: nn.Module, _args: Any, output: torch.Tensor) -> None:
                calls.append((name, module))
                outputs[id(output)] = name
                alive.append(output)
            return hook

        def norm_hook(name: str):
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                producer = outputs.get(id(args[0]))
                if producer is not None:
                    norms[producer] = name
            return hook

        for name, module in self.teacher.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(layer_hook(name)))
            elif isinstance(module, _NORMS):
                handles.append(module.register_forward_pre_hook(norm_hook(name)))
        try:
            with torch.no_grad():
                output = self.teacher(sample)
        finally:
            for handle in handles:
                handle.remove()
        names = [name for name, _ in calls]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ParameterError("formulation", f"layer-wise state matching needs each layer called once per forward; {repeated} are reused")
        if not calls or not isinstance(calls[-1][1], nn.Linear) or outputs.get(id(output)) != calls[-1][0]:
            raise ParameterError("formulation", "layer-wise state matching needs a network whose output is a Linear classifier's output")
        modules = dict(self.teacher.named_modules())
        units = [self._unit(name, module, norms.get(name), modules) for name, module in calls[:-1]]
        return units, calls[-1][0]

    @staticmethod
    def _unit(name: str, module: nn.Module, norm_name: str | None, modules: dict[str, nn.Module]) -> Unit:
        weight = module.weight.detach().to(DTYPE).reshape(module.weight.shape[0], -1)
        bias = module.bias.detach().to(DTYPE) if module.bias is not None else None
        norm = modules[norm_name] if norm_name else None
        if norm is not None:
            # Eval-mode BatchNorm is the affine map x -> scale (x - mean) + shift, folded into the layer.
            scale = (norm.running_var.to(DTYPE) + norm.eps).rsqrt()
            if norm.weight is not None:
                scale = scale * norm.weight.detach().to(DTYPE)
            shift = norm.bias.detach().to(DTYPE) if norm.bias is not None else torch.zeros_like(scale)
            base = bias if bias is not None else torch.zeros_like(scale)
            weight = scale[:, None] * weight
            bias = scale * (base - norm.running_mean.to(DTYPE)) + shift
        return Unit(name, module, norm_name, norm, weight, bias)

    def _design(self, unit: Unit, inputs: torch.Tensor) -> torch.Tensor:
        rows = patches(unit.module, inputs).to(DTYPE)
        if unit.bias is None:
            return rows
        return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)

    def _mask(self, unit: Unit) -> torch.Tensor | None:
        if self.settings.constrain == "row" or unit.bias is None:
            return None
        return torch.arange(unit.features, device=self.device) < unit.weight.shape[1]

    # ------------------------------------------------------------------ radii and the deployed model
    def radii(self, kappa: float) -> list[torch.Tensor]:
        relative = float(kappa) / self.settings.conversion_kappa
        radii = []
        for unit in self.units:
            norms = unit.weight.abs().sum(dim=1)
            if unit.bias is not None and self.settings.constrain == "row":
                norms = norms + unit.bias.abs()
            largest = float(norms.max())
            radii.append(torch.full((unit.weight.shape[0],), relative * largest if largest > 0 else relative, dtype=DTYPE, device=self.device))
        return radii

    def build(self, solutions: list[ConstrainedLassoSolution], kappa: float) -> nn.Module:
        student = copy.deepcopy(self.teacher).eval()
        modules = dict(student.named_modules())
        with torch.no_grad():
            for unit, solution in zip(self.units, solutions):
                weights = solution.weights.to(self.device, DTYPE)
                layer = modules[unit.name]
                fan_in = unit.weight.shape[1]
                layer.weight.copy_(weights[:, :fan_in].reshape(layer.weight.shape))
                bias = weights[:, fan_in] if unit.bias is not None else None
                if unit.norm_name is None:
                    if bias is not None:
                        layer.bias.copy_(bias)
                    continue
                # The BatchNorm becomes "add the fitted bias": x -> (x - (-b)) / sqrt((1 - eps) + eps).
                norm = modules[unit.norm_name]
                if layer.bias is not None:
                    layer.bias.zero_()
                norm.running_mean.copy_(-bias)
                norm.running_var.fill_(1.0 - norm.eps)
                if norm.weight is not None:
                    norm.weight.fill_(1.0)
                    norm.bias.zero_()
            if self.settings.readout.mode != "none":
                self._refit_classifier(student, modules[self.classifier_name])
        return student

    def _refit_classifier(self, student: nn.Module, classifier: nn.Linear) -> None:
        has_bias = classifier.bias is not None
        statistics = GramAccumulator(classifier.in_features + int(has_bias), classifier.out_features, DTYPE, self.device)
        captured: dict[str, torch.Tensor] = {}

        def take(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured["features"] = args[0].reshape(-1, classifier.in_features).to(DTYPE)

        handle = classifier.register_forward_pre_hook(take)
        try:
            for inputs, _ in self.loader:
                inputs = inputs.to(device=self.device, dtype=self.dtype)
                student(inputs)
                features = captured.pop("features")
                if has_bias:
                    features = torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)
                statistics.add(features, self.teacher(inputs))
        finally:
            handle.remove()
        out = fit_readout(statistics.problem(), self.settings.readout)
        classifier.weight.copy_(out[:, : classifier.in_features])
        if has_bias:
            classifier.bias.copy_(out[:, classifier.in_features])

    def metrics(self) -> dict[str, Any]:
        return {"layers": [unit.name for unit in self.units], "classifier": self.classifier_name}
