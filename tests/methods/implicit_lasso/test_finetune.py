"""Fine-tuning of the refitted implicit model on its support (``method.finetune_*``)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from consparse.errors import ConfigError
from consparse.implicit.projection import row_l1_norms
from consparse.methods.implicit_lasso.finetune import (
    FinetuneSettings,
    drop_dead_states_,
    finetune_on_support,
    move_support_,
    support_masks,
)
from consparse.models.implicit import ImplicitModel
from consparse.report.results import read_results
from consparse.train import run

SMALL_MLP = ("model=mlp", "model.hidden=[24,12]", "dataset=digits", "evaluation.compression_grid=null")


def _sparse_model(kappa: float = 0.5) -> ImplicitModel:
    """A small implicit model with about half of every matrix zero and rows of A on the kappa sphere."""
    torch.manual_seed(0)
    model = ImplicitModel([6], 3, state_size=8, kappa=kappa)
    with torch.no_grad():
        for weight in model.sparsifiable_weights().values():
            weight.mul_(torch.rand_like(weight) < 0.5)
        model.A.mul_(kappa / row_l1_norms(model.A).clamp_min(1e-12).unsqueeze(1))
    return model


def _batches(count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A separable problem: the label is the argmax of the first three features."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        x = torch.randn(32, 6, generator=generator)
        batches.append((x, x[:, :3].argmax(dim=1)))
    return batches


def test_the_support_is_fixed_and_a_stays_well_posed() -> None:
    model = _sparse_model()
    before = support_masks(model)
    finetune_on_support(model, _batches(), FinetuneSettings(epochs=3, lr=1.0))
    after = support_masks(model)
    for name, mask in before.items():
        assert not bool((after[name] & ~mask).any()), f"{name} gained a nonzero"
    # A large learning rate pushes rows of A out of the ball: the projection brings them back.
    assert float(row_l1_norms(model.A.detach()).max()) <= model.kappa + 1e-6
    assert all(weight.grad is None for weight in model.sparsifiable_weights().values())


def test_the_loss_decreases_on_a_tiny_problem() -> None:
    model = _sparse_model()
    losses = finetune_on_support(model, _batches(), FinetuneSettings(epochs=8, lr=0.1)).epoch_losses
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]


def test_zero_epochs_change_nothing() -> None:
    model = _sparse_model()
    before = {name: weight.detach().clone() for name, weight in model.sparsifiable_weights().items()}
    assert finetune_on_support(model, _batches(), FinetuneSettings(epochs=0)).epoch_losses == []
    for name, weight in model.sparsifiable_weights().items():
        assert torch.equal(weight.detach(), before[name])


def test_regrowth_keeps_each_count_moves_places_and_leaves_c_and_the_bias_columns() -> None:
    model = _sparse_model()
    before = support_masks(model)
    settings = FinetuneSettings(epochs=3, lr=0.1, regrow=0.5, regrow_every=1)
    statistics = finetune_on_support(model, _batches(), settings)
    after = support_masks(model)
    # 12 steps: an update at every step from 1 to 8 (below three quarters of them).
    assert statistics.regrow_updates == 8 and sum(statistics.moved.values()) > 0
    for name, mask in before.items():
        assert int(after[name].sum()) <= int(mask.sum()), f"{name} gained nonzeros"
    assert bool((after["B"] & ~before["B"]).any()), "no entry of B moved"
    bias = model.input_size
    assert torch.equal(after["B"][:, bias], before["B"][:, bias]) and torch.equal(after["D"][:, bias], before["D"][:, bias])
    assert torch.equal(after["C"], before["C"]) and statistics.moved["C"] == 0
    assert float(row_l1_norms(model.A.detach()).max()) <= model.kappa + 1e-6


def test_each_epoch_draws_its_own_order() -> None:
    epochs: list[int] = []

    class Sampler:
        def set_epoch(self, epoch: int) -> None:
            epochs.append(epoch)

    class Loader(list):
        sampler = Sampler()

    finetune_on_support(_sparse_model(), Loader(_batches()), FinetuneSettings(epochs=3, lr=0.1))
    assert epochs == [0, 1, 2]


def test_the_regrowth_fraction_decays_to_zero_at_three_quarters_of_the_steps() -> None:
    settings = FinetuneSettings(epochs=1, regrow=0.4, regrow_every=10)
    fractions = [settings.regrow_fraction(step, 100) for step in range(100)]
    moments = [step for step, fraction in enumerate(fractions) if fraction]
    assert moments == [10, 20, 30, 40, 50, 60, 70]
    assert fractions[10] == pytest.approx(0.2 * (1 + math.cos(math.pi * 10 / 75)))
    assert all(fractions[a] > fractions[b] for a, b in itertools.pairwise(moments))
    assert FinetuneSettings(epochs=1).regrow_fraction(10, 100) == 0.0


def test_an_entry_moves_from_the_smallest_weight_to_the_largest_gradient() -> None:
    weight = torch.tensor([[0.1, 0.0, 0.5, 0.0], [0.0, -0.3, 0.0, 0.0]], requires_grad=True)
    weight.grad = torch.tensor([[0.0, 5.0, 0.0, 9.0], [0.0, 0.0, 0.0, 7.0]])
    mask = weight.detach() != 0
    movable = torch.ones_like(mask)
    movable[0, 3] = False  # e.g. a bias column: the largest gradient there may not take an entry
    moments = {"exp_avg": torch.ones(2, 4), "step": torch.tensor(3.0)}
    assert move_support_(weight, mask, movable, 2 / 3, moments) == 2
    assert mask.tolist() == [[False, True, True, False], [False, False, False, True]]
    assert weight.detach().tolist() == [[0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert moments["exp_avg"].tolist() == [[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]]


def test_the_states_the_deployment_drops_are_zeroed_without_changing_the_output() -> None:
    model = _sparse_model()
    with torch.no_grad():
        model.C[:, 0] = 0  # state 0 is read by no output, and by no state:
        model.A[:, 0] = 0
        model.B[0, 0] = 1.0
    inputs = torch.randn(16, 6, generator=torch.Generator().manual_seed(2))
    expected = model(inputs).detach()
    assert drop_dead_states_(model) >= 1
    assert not bool(model.B[0].any()) and not bool(model.A[0].any())
    torch.testing.assert_close(model(inputs).detach(), expected)


@pytest.mark.parametrize(("settings", "field"), [(FinetuneSettings(epochs=-1), "method.finetune_epochs"),
                                                 (FinetuneSettings(epochs=1, lr=0.0), "method.finetune_lr"),
                                                 (FinetuneSettings(epochs=1, regrow=1.0), "method.finetune_regrow"),
                                                 (FinetuneSettings(epochs=1, regrow=0.3, regrow_every=0), "method.finetune_regrow_every")])
def test_bad_settings_are_named(settings: FinetuneSettings, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        settings.validate("method.")


def test_finetuning_a_conv_net_is_refused_before_training(make_config) -> None:
    from consparse.config import instantiate_node
    from consparse.methods import build_method
    from consparse.models import build_model

    cfg = make_config("method=implicit_lasso", "model=lenet5", "dataset=digits", "dataset.image_size=28", "method.finetune_epochs=1")
    info = instantiate_node(cfg.dataset).info
    with pytest.raises(ConfigError, match="method.finetune_epochs"):
        build_method(cfg.method, build_model(cfg.model, info), info)


def test_a_run_reports_the_one_shot_and_the_finetuned_accuracy(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=implicit_lasso", *SMALL_MLP, "trainer.max_epochs=3", "method.optimizer.lr=0.01",
                      "method.kappa=0.1", "method.data_fraction=0.5", "method.finetune_epochs=1", "method.finetune_lr=0.01")
    run(cfg)
    on_disk = read_results(tmp_path / "run")
    finetune = on_disk["method_metrics"]["finetune"]
    assert finetune["ran"] and finetune["epochs"] == 1 and len(finetune["epoch_losses"]) == 1
    assert 0 < finetune["one_shot_accuracy"] <= 1 and finetune["finetuned_accuracy"] == on_disk["test_accuracy"]
    assert on_disk["method_metrics"]["well_posedness"] <= 0.1 + 1e-6


def test_a_run_with_regrowth_moves_entries_and_stays_at_its_target(make_config, tmp_path: Path) -> None:
    cfg = make_config("method=implicit_lasso", *SMALL_MLP, "trainer.max_epochs=3", "method.optimizer.lr=0.01",
                      "method.target_density=0.3", "method.data_fraction=0.5", "method.finetune_epochs=2",
                      "method.finetune_regrow=0.3", "method.finetune_regrow_every=2")
    run(cfg)
    on_disk = read_results(tmp_path / "run")
    finetune = on_disk["method_metrics"]["finetune"]
    assert finetune["regrow"] == 0.3 and finetune["regrow_updates"] > 0 and sum(finetune["moved"].values()) > 0
    assert on_disk["density"] <= 0.3
