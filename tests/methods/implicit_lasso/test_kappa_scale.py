"""``method.kappa_scale``: the radius relative to each layer's largest row, or absolute (the paper's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from consparse.errors import ConfigError
from consparse.lasso.search import SearchSettings
from consparse.methods.implicit_lasso.layerwise import LayerwiseStateMatching
from consparse.methods.implicit_lasso.matching import MatchingSettings
from consparse.methods.implicit_lasso.readout import ReadoutSettings
from consparse.methods.implicit_lasso.refit import RowSolver
from consparse.methods.implicit_lasso.state_matching import ImplicitStateMatching
from consparse.models.lenet import LeNet5

CPU = torch.device("cpu")


def _raw_rows(teacher: nn.Sequential) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([layer.weight.abs().sum(1) + layer.bias.abs() for layer in (teacher[0], teacher[2])])


def _mlp(weight_scale: float) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(weight_scale)
                layer.bias.mul_(weight_scale)
    return net


def _loader(shape: list[int], batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(40, *shape, generator=generator, dtype=torch.float64), torch.zeros(40, dtype=torch.long))
            for _ in range(batches)]


def _solve(matcher, kappa: float):
    solver = RowSolver(matcher.blocks, 64)
    return matcher.build(solver.solve(matcher.radii(kappa), SearchSettings(step="path")), kappa)


def _row_norms(model) -> torch.Tensor:
    return torch.cat([model.A, model.B], dim=1).abs().sum(dim=1)


def test_absolute_radius_bounds_every_row_in_the_networks_units() -> None:
    teacher = _mlp(1.0)
    loader = _loader([6])
    settings = MatchingSettings(kappa_scale="absolute", readout=ReadoutSettings(mode="none"))
    matcher = ImplicitStateMatching(teacher, loader, [6], settings, CPU)
    kappa = 0.5 * float(_raw_rows(teacher).min())
    model = _solve(matcher, kappa)
    norms = _row_norms(model)
    # Every row is cut to the same radius, whatever its layer's largest row.
    assert torch.all(norms <= kappa * (1 + 1e-9))
    assert torch.allclose(norms, torch.full_like(norms, kappa), rtol=1e-6)
    assert model.well_posedness() <= kappa * (1 + 1e-9)


def test_an_absolute_radius_above_every_row_reproduces_the_teacher_in_its_own_units() -> None:
    teacher = _mlp(0.1)  # every raw row has L1 norm below 0.9
    loader = _loader([6])
    assert float(_raw_rows(teacher).max()) < 0.9
    settings = MatchingSettings(kappa_scale="absolute", readout=ReadoutSettings(mode="none"))
    model = _solve(ImplicitStateMatching(teacher, loader, [6], settings, CPU), 0.9)
    inputs = loader[0][0]
    # Up to the LASSO's floor penalty (lambda_min_ratio) on a rank-deficient design.
    with torch.no_grad():
        expected, hidden = teacher(inputs), teacher[1](teacher[0](inputs))
        assert (model(inputs) - expected).abs().max() <= 1e-2 * expected.abs().max()
        # The states are the teacher's own activations (no per-layer rescaling).
        assert (model.states(inputs)[:, :8] - hidden).abs().max() <= 1e-2 * hidden.abs().max()


def test_relative_radius_is_the_converted_models_radius_and_differs_from_absolute() -> None:
    teacher = _mlp(1.0)
    loader = _loader([6])
    relative = ImplicitStateMatching(teacher, loader, [6], MatchingSettings(readout=ReadoutSettings(mode="none")), CPU)
    absolute = ImplicitStateMatching(teacher, loader, [6], MatchingSettings(kappa_scale="absolute", readout=ReadoutSettings(mode="none")), CPU)
    # The same radius, in different units: the converted rows (largest 0.95) against the raw rows.
    assert torch.equal(relative.radii(0.3)[0], absolute.radii(0.3)[0])
    assert not torch.allclose(relative.blocks[0].problem.gram, absolute.blocks[0].problem.gram)
    assert _row_norms(_solve(relative, 0.3)).max() <= 0.3 * (1 + 1e-9)


def test_layerwise_absolute_radius_is_kappa_on_every_row() -> None:
    torch.manual_seed(0)
    lenet = LeNet5([1, 16, 16], 4, conv_channels=(3, 4), hidden=(6,)).double().eval()
    loader = _loader([1, 16, 16], batches=2)
    absolute = LayerwiseStateMatching(lenet, loader, [1, 16, 16], MatchingSettings(kappa_scale="absolute"), CPU)
    relative = LayerwiseStateMatching(lenet, loader, [1, 16, 16], MatchingSettings(), CPU)
    for block_radii in absolute.radii(0.2):
        assert torch.all(block_radii == 0.2)
    largest = [float((unit.weight.abs().sum(1) + unit.bias.abs()).max()) for unit in relative.units]
    assert len(largest) == 3  # two convolutions and the hidden Linear
    for block_radii, norm in zip(relative.radii(0.2), largest):
        assert torch.allclose(block_radii, torch.full_like(block_radii, 0.2 / 0.95 * norm))


def test_an_unknown_kappa_scale_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"method\.kappa_scale"):
        MatchingSettings(kappa_scale="per_layer").validate("method.")
