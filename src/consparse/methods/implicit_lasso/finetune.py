"""Fine-tuning of the refitted implicit model on its fixed support (beyond the paper's one shot).

The constrained LASSO chooses each row's support and values by matching the teacher's states; the
read-out refit then fits ``(C, D)`` to them. Nothing in that one shot looks at the labels or at
the errors that compound through the fixed point, so a few epochs of end-to-end training of the
kept entries (fixed-point forward, implicit backward) can recover accuracy at no cost in density:

* the support is fixed: every gradient is masked to the nonzeros of ``A, B, C, D`` before the step
  and the entries off the support are zeroed again after it (Adam's moments stay zero there too);
* well-posedness is kept: after every step each row of ``A`` is projected onto the model's
  ``kappa`` ball (``ImplicitModel.project_``), which only shrinks entries, so it adds no nonzero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from consparse.errors import ParameterError
from consparse.models.implicit import ImplicitModel


@dataclass(frozen=True)
class FinetuneSettings:
    """``method.finetune_epochs`` (0 keeps the paper's one shot) and ``method.finetune_lr``.

    ``lr`` is relative: each matrix's Adam learning rate is ``lr`` times the root mean square of its
    nonzero entries, because the conversion's rescaling leaves ``A, B`` and ``C`` orders of magnitude
    apart (one absolute rate either wrecks the small entries or leaves the large ones still).
    """

    epochs: int = 0
    lr: float = 1.0e-2

    def validate(self, prefix: str = "") -> None:
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise ParameterError(f"{prefix}finetune_epochs", f"expected an integer >= 0 (0: the one-shot refit only), got {self.epochs!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            raise ParameterError(f"{prefix}finetune_lr", f"expected a learning rate > 0, got {self.lr!r}")


def support_masks(model: ImplicitModel) -> dict[str, torch.Tensor]:
    """The nonzero pattern of each of ``A, B, C, D``: the entries fine-tuning may change."""
    return {name: weight.detach() != 0 for name, weight in model.sparsifiable_weights().items()}


def _restrict_(model: ImplicitModel, masks: dict[str, torch.Tensor]) -> None:
    """Zero every entry off the support, then bring ``A`` back into its well-posedness ball."""
    with torch.no_grad():
        for name, weight in model.sparsifiable_weights().items():
            weight.mul_(masks[name])
    model.project_()


def _typical_entry(weight: torch.Tensor) -> float:
    """Root mean square of the nonzero entries (1 for an all-zero matrix, which never moves anyway)."""
    nonzero = weight.detach()[weight.detach() != 0]
    return float(nonzero.pow(2).mean().sqrt()) if nonzero.numel() else 1.0


def _mask_gradients_(model: ImplicitModel, masks: dict[str, torch.Tensor]) -> None:
    """Keep the gradients on the support; under DDP average them, so every rank's copy stays the same."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    for name, weight in model.sparsifiable_weights().items():
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        if world > 1:
            dist.all_reduce(weight.grad)
            weight.grad.div_(world)
        weight.grad.mul_(masks[name])


def finetune_on_support(
    model: ImplicitModel,
    batches: Iterable[Any],
    settings: FinetuneSettings,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Train the nonzero entries of ``model`` in place on ``(inputs, targets)`` batches; the epochs' mean losses.

    Cross-entropy on the labels, Adam on ``A, B, C, D`` (rates relative to each matrix's entries) with masked gradients; the support never
    grows and ``||A||_inf <= model.kappa`` holds after every step.
    """
    masks = support_masks(model)
    weights = list(model.sparsifiable_weights().values())
    optimizer = torch.optim.Adam([{"params": [weight], "lr": settings.lr * _typical_entry(weight)} for weight in weights])
    loss_function = nn.CrossEntropyLoss()
    was_training = model.training
    model.train()
    losses: list[float] = []
    for _ in range(settings.epochs):
        total, count = 0.0, 0
        for batch in batches:
            inputs, targets = batch[0].to(device), batch[1].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(inputs), targets)
            loss.backward()
            _mask_gradients_(model, masks)
            optimizer.step()
            _restrict_(model, masks)
            total += float(loss.detach()) * len(targets)
            count += len(targets)
        losses.append(total / max(count, 1))
    model.train(was_training)
    for weight in weights:
        weight.grad = None
    return losses
