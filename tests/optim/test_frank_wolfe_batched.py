"""On a GPU, Frank-Wolfe takes the steps of its L2-ball and k-support groups together (few kernels for
many groups): the same iterates and gaps as stepping each group on its own, for every step-size rule
and momentum form. On the CPU (no launches to save) the batching is switched on for the test."""

from __future__ import annotations

import pytest
import torch

from consparse.optim import FrankWolfe
from consparse.optim.constraints import KSupportNormBall, LpBall

SHAPES = [(7,), (3, 5), (4, 2, 3, 3), (11,)]


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.fixture(autouse=True)
def batch_on_the_cpu_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FrankWolfe, "batched_device_types", frozenset({"cpu", "cuda"}))


def make_groups(seed: int, device: str = "cpu") -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]
    params[2].data = params[2].data.to(memory_format=torch.channels_last)
    extra = [torch.nn.Parameter(torch.randn(6, generator=generator)), torch.nn.Parameter(torch.randn(2, 2, generator=generator))]
    groups = [{"params": [p], "constraint": LpBall(p.shape, 0.5 + i, p=2), "name": f"g{i}"} for i, p in enumerate(params)]
    groups.append({"params": extra, "constraint": LpBall((10,), 1.5, p=2), "name": "global"})
    # k-support balls (batched among themselves), one of them over two tensors and one channels_last.
    conv = torch.nn.Parameter(torch.randn(6, 3, 3, 3, generator=generator).to(memory_format=torch.channels_last))
    pair = [torch.nn.Parameter(torch.randn(5, 4, generator=generator)), torch.nn.Parameter(torch.randn(9, generator=generator))]
    linear = torch.nn.Parameter(torch.randn(5, 4, generator=generator))
    groups.insert(2, {"params": [linear], "constraint": KSupportNormBall((5, 4), 2.0, k=0.3), "name": "k0"})
    groups.append({"params": [conv], "constraint": KSupportNormBall((6, 3, 3, 3), 3.0, k=0.1), "name": "k1"})
    groups.append({"params": pair, "constraint": KSupportNormBall((29,), 1.0, k=4), "name": "k2"})
    # A set that is never batched, between them: the batched groups keep their own step counts.
    odd = torch.nn.Parameter(torch.randn(8, generator=generator))
    groups.insert(4, {"params": [odd], "constraint": LpBall((8,), 1.0, p=1), "name": "l1"})
    for group in groups:
        for p in group["params"]:
            p.data = p.data.to(device)
    return groups


OPTIONS = [
    {"rescale": "gradient"},
    {"rescale": "none", "lr": 0.3},
    {"rescale": "diameter"},
    {"rescale": "fast_gradient", "momentum_form": "sum"},
    {"rescale": "adaptive", "lr": 0.02, "second_moment": 0.99},
    {"step_rule": "sublinear", "step_offset": 2},
    {"momentum": 0.0},
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", OPTIONS, ids=[str(o) for o in OPTIONS])
def test_batched_groups_step_like_separate_groups(options: dict, device: str) -> None:
    settings = {"lr": 0.5, "momentum": 0.9, **options}
    together_groups, separate_groups = make_groups(0, device), make_groups(0, device)
    together = FrankWolfe(together_groups, **settings)
    separate = [FrankWolfe([group], **settings) for group in separate_groups]
    together.make_feasible_()
    for optimizer in separate:
        optimizer.make_feasible_()
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        for a, b in zip(together_groups, separate_groups):
            for p, q in zip(a["params"], b["params"]):
                p.grad = torch.randn(p.shape, generator=generator).to(device)
                q.grad = p.grad.clone()
        together.step()
        for optimizer in separate:
            optimizer.step()
    assert len(together._batch_layouts) == 2, "the L2-ball and the k-support groups were not batched"
    for a, b in zip(together_groups, separate_groups):
        for p, q in zip(a["params"], b["params"]):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    gaps = together.frank_wolfe_gaps()
    expected = {name: gap for optimizer in separate for name, gap in optimizer.frank_wolfe_gaps().items()}
    assert set(gaps) == set(expected)
    for name, gap in gaps.items():
        torch.testing.assert_close(gap, expected[name], rtol=1e-5, atol=1e-6)
    assert all(a["constraint"].is_feasible(torch.cat([p.detach().reshape(-1) for p in a["params"]]).reshape(a["constraint"].shape))
               for a in together_groups)


def test_a_state_dict_round_trip_keeps_batching_exact() -> None:
    groups = make_groups(3)
    optimizer = FrankWolfe(groups, lr=0.5)
    for _ in range(2):
        for group in groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        optimizer.step()
    fresh_groups = make_groups(3)
    for a, b in zip(groups, fresh_groups):
        for p, q in zip(a["params"], b["params"]):
            q.data.copy_(p.data)
    fresh = FrankWolfe(fresh_groups, lr=0.5)
    fresh.load_state_dict(optimizer.state_dict())
    for a, b in zip(groups, fresh_groups):
        for p, q in zip(a["params"], b["params"]):
            p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    optimizer.step()
    fresh.step()
    for a, b in zip(groups, fresh_groups):
        for p, q in zip(a["params"], b["params"]):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
