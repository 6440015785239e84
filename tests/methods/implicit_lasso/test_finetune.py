"""Fine-tuning of the refitted implicit model on its fixed support (``method.finetune_epochs``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from consparse.errors import ConfigError
from consparse.implicit.projection import row_l1_norms
from consparse.methods.implicit_lasso.finetune import FinetuneSettings, finetune_on_support, support_masks
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
    losses = finetune_on_support(model, _batches(), FinetuneSettings(epochs=8, lr=0.1))
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]


def test_zero_epochs_change_nothing() -> None:
    model = _sparse_model()
    before = {name: weight.detach().clone() for name, weight in model.sparsifiable_weights().items()}
    assert finetune_on_support(model, _batches(), FinetuneSettings(epochs=0)) == []
    for name, weight in model.sparsifiable_weights().items():
        assert torch.equal(weight.detach(), before[name])


@pytest.mark.parametrize(("settings", "field"), [(FinetuneSettings(epochs=-1), "method.finetune_epochs"),
                                                 (FinetuneSettings(epochs=1, lr=0.0), "method.finetune_lr")])
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
