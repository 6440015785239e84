"""Layer-wise state matching of conv nets: exact folding, reproduction at the teacher's radius, sparsity."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from consparse.compress.count import density
from consparse.errors import ConfigError
from consparse.lasso.active_set import ActiveSetSettings
from consparse.methods.implicit_lasso.layerwise import LayerwiseStateMatching, check_layerwise
from consparse.methods.implicit_lasso.matching import MatchingSettings
from consparse.methods.implicit_lasso.readout import ReadoutSettings
from consparse.methods.implicit_lasso.refit import RowSolver
from consparse.models.lenet import LeNet5
from consparse.models.resnet import CifarResNet


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(0.3 * torch.randn(channels, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(channels, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(channels, generator=generator))
    return model.eval()


def _networks() -> dict[str, tuple[nn.Module, list[int]]]:
    torch.manual_seed(0)
    lenet = LeNet5([1, 16, 16], 4, conv_channels=(3, 4), hidden=(6,)).eval()
    resnet = _randomise_batchnorm(CifarResNet([3, 8, 8], 4, depth=8))
    return {"lenet5": (lenet, [1, 16, 16]), "resnet8": (resnet, [3, 8, 8])}


def _match(name: str, readout: str = "none", samples: int = 96):
    teacher, shape = _networks()[name]
    generator = torch.Generator().manual_seed(2)
    loader = [(torch.randn(32, *shape, generator=generator), torch.zeros(32, dtype=torch.long)) for _ in range(samples // 32)]
    settings = MatchingSettings(readout=ReadoutSettings(mode=readout))
    return teacher, loader, LayerwiseStateMatching(teacher, loader, shape, settings, torch.device("cpu"))


def _folded(unit) -> torch.Tensor:
    return torch.cat([unit.weight, unit.bias[:, None]], dim=1) if unit.bias is not None else unit.weight


@pytest.mark.parametrize("name", ["lenet5", "resnet8"])
def test_statistics_and_write_back_are_exact_for_the_teachers_rows(name: str) -> None:
    teacher, loader, matcher = _match(name)
    for unit, block in zip(matcher.units, matcher.blocks):
        # The teacher's folded rows fit their targets exactly: G w = c and w'Gw = ||z||^2.
        folded = _folded(unit)
        problem = block.problem
        # (to the float32 rounding of the teacher's activations)
        residual = (folded @ problem.gram - problem.correlations).norm(dim=1) / problem.correlations.norm(dim=1)
        assert float(residual.max()) < 1e-5
        assert float((problem.loss(folded) / problem.target_sq_norms).max()) < 1e-10
    student = matcher.build([SimpleNamespace(weights=_folded(unit)) for unit in matcher.units], 0.5)
    x = loader[0][0]
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), rtol=1e-5, atol=1e-5)


def test_the_teachers_radius_reproduces_a_lenet() -> None:
    teacher, loader, matcher = _match("lenet5")
    assert [unit.name for unit in matcher.units] == ["layers.0", "layers.3", "layers.7"]
    solutions = RowSolver(matcher.blocks, 16, ActiveSetSettings(lambda_min_ratio=1e-9)).solve(matcher.radii(matcher.settings.conversion_kappa))
    student = matcher.build(solutions, matcher.settings.conversion_kappa)
    x = loader[0][0]
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), rtol=1e-4, atol=1e-4)
    for unit, solution in zip(matcher.units, solutions):
        torch.testing.assert_close(solution.weights, _folded(unit), rtol=1e-4, atol=1e-5)


def test_batchnorm_is_folded_into_its_convolution() -> None:
    teacher, _, matcher = _match("resnet8")
    first = matcher.units[0]
    assert first.name == "conv1" and first.norm_name == "bn1"
    assert {unit.norm_name for unit in matcher.units} >= {"layer1.0.bn1", "layer1.0.bn2", "layer2.0.downsample.1"}
    solutions = RowSolver(matcher.blocks, row_batch=64).solve(matcher.radii(0.02))
    student = matcher.build(solutions, 0.02)
    norm = dict(student.named_modules())["bn1"]
    torch.testing.assert_close(norm.running_mean, -solutions[0].weights[:, -1].float())
    torch.testing.assert_close(norm.weight.data, torch.ones_like(norm.weight))
    # The teacher is left as it was.
    assert not torch.equal(dict(teacher.named_modules())["bn1"].running_mean, norm.running_mean)


def test_smaller_radii_give_sparser_networks() -> None:
    teacher, _, matcher = _match("lenet5", readout="lstsq")
    solver = RowSolver(matcher.blocks, row_batch=64)
    densities = []
    for kappa in (0.1, 0.03, 0.01):
        solutions = solver.solve(matcher.radii(kappa))
        student = matcher.build(solutions, kappa)
        densities.append(density(student, teacher))
        for radius, solution in zip(matcher.radii(kappa), solutions):
            assert bool((solution.norm <= radius * (1 + 1e-9)).all())
    assert densities[0] > densities[1] > densities[2]


def test_layers_the_layerwise_form_cannot_fit_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="groups=1"):
        check_layerwise(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2)))
    with pytest.raises(ConfigError, match="Conv1d"):
        check_layerwise(nn.Sequential(nn.Conv1d(4, 4, 3), nn.Flatten(), nn.Linear(8, 2)))
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2), nn.ReLU())
    with pytest.raises(ConfigError, match="Linear classifier"):
        LayerwiseStateMatching(net, [], [1, 4, 4], MatchingSettings(), torch.device("cpu"))
