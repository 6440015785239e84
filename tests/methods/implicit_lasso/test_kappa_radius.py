"""``method.kappa``: the absolute radius of every row in the converted, well-posed model's units.

The conversion rescales each layer so that its largest row of ``[A B]`` has L1 norm
``conversion_kappa`` (the paper's well-posed model); ``kappa`` bounds every refitted row in those
units, whatever the network's own weight scale.
"""

from __future__ import annotations

import torch
from torch import nn

from consparse.lasso.search import SearchSettings
from consparse.methods.implicit_lasso.layerwise import LayerwiseStateMatching
from consparse.methods.implicit_lasso.matching import MatchingSettings
from consparse.methods.implicit_lasso.readout import ReadoutSettings
from consparse.methods.implicit_lasso.refit import RowSolver
from consparse.methods.implicit_lasso.state_matching import ImplicitStateMatching
from consparse.models.lenet import LeNet5

CPU = torch.device("cpu")
SETTINGS = MatchingSettings(readout=ReadoutSettings(mode="none"))


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
    solver = RowSolver(matcher.blocks, 64, SearchSettings(step="path"))
    return matcher.build(solver.solve(matcher.radii(kappa)), kappa)


def _row_norms(model) -> torch.Tensor:
    return torch.cat([model.A, model.B], dim=1).detach().abs().sum(dim=1)


def test_kappa_bounds_every_refitted_row_of_the_rescaled_model() -> None:
    teacher = _mlp(3.0)
    matcher = ImplicitStateMatching(teacher, _loader([6]), [6], SETTINGS, CPU)
    # The same radius on every row of every layer: absolute, in the converted model's units.
    assert torch.equal(matcher.radii(0.3)[0], torch.full((13,), 0.3, dtype=torch.float64))
    model = _solve(matcher, 0.3)
    norms = _row_norms(model)
    assert torch.all(norms <= 0.3 * (1 + 1e-9))
    # The teacher's converted rows reach 0.95, so the radius binds.
    assert float(norms.max()) >= 0.3 * (1 - 1e-6)
    assert model.well_posedness() <= 0.3 * (1 + 1e-9)


def test_the_conversion_radius_reproduces_a_teacher_whose_raw_rows_exceed_it() -> None:
    teacher = _mlp(3.0)
    # In the network's own units the teacher's rows lie far outside any radius below 1.
    assert float(_raw_rows(teacher).min()) > 1.0
    loader = _loader([6])
    matcher = ImplicitStateMatching(teacher, loader, [6], SETTINGS, CPU)
    kappa = SETTINGS.conversion_kappa
    model = _solve(matcher, kappa)
    assert _row_norms(model).max() <= kappa * (1 + 1e-9)
    inputs = loader[0][0]
    # Up to the LASSO's floor penalty (lambda_min_ratio) on a rank-deficient design.
    with torch.no_grad():
        expected, states = teacher(inputs), matcher.exact.states(inputs)
        assert (model(inputs) - expected).abs().max() <= 1e-2 * expected.abs().max()
        assert (model.states(inputs) - states).abs().max() <= 1e-2 * states.abs().max()


def test_layerwise_kappa_is_the_radius_in_each_layers_rescaled_units() -> None:
    torch.manual_seed(0)
    lenet = LeNet5([1, 16, 16], 4, conv_channels=(3, 4), hidden=(6,)).double().eval()
    matcher = LayerwiseStateMatching(lenet, _loader([1, 16, 16], batches=2), [1, 16, 16], MatchingSettings(), CPU)
    largest = [float((unit.weight.abs().sum(1) + unit.bias.abs()).max()) for unit in matcher.units]
    assert len(largest) == 3  # two convolutions and the hidden Linear
    # Each layer rescaled so that its largest row has norm conversion_kappa: kappa there is
    # kappa / conversion_kappa times that row in the network's units.
    for block_radii, norm in zip(matcher.radii(0.2), largest):
        assert torch.allclose(block_radii, torch.full_like(block_radii, 0.2 / 0.95 * norm))
    for block_radii, norm in zip(matcher.radii(0.95), largest):
        assert torch.allclose(block_radii.max(), torch.tensor(norm, dtype=torch.float64))
