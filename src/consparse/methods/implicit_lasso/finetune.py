"""Fine-tuning of the refitted implicit model on its support (beyond the paper's one shot).

The constrained LASSO chooses each row's support and values by matching the teacher's states; the
read-out refit then fits ``(C, D)`` to them. Nothing in that one shot looks at the labels or at
the errors that compound through the fixed point, so a few epochs of end-to-end training of the
kept entries (fixed-point forward, implicit backward) can recover accuracy at no cost in density:

* it starts from the support the deployed model keeps: the rows and columns of the states the
  deployment drops (``consparse.implicit.structure.plan_states``) are zeroed first, which changes no
  output, so that training cannot revive a state the density did not count;
* the support is fixed by default: every gradient is masked to the nonzeros of ``A, B, C, D`` before
  the step and the entries off the support are zeroed again after it (Adam's moments stay zero there);
* with ``regrow > 0`` the number of nonzeros of each matrix is fixed instead of their places: every
  ``regrow_every`` steps the smallest kept entries of each matrix move to the places of its largest
  gradients (RigL's drop and grow, Evci et al. 2020, with its cosine-decaying fraction that reaches 0
  at three quarters of the steps). ``C`` and the bias columns keep their support: ``C`` decides which
  states the deployment keeps (moving one of its entries would strand a state's whole row), and a
  bias entry is not counted where a weight is;
* well-posedness is kept: after every step each row of ``A`` is projected onto the model's
  ``kappa`` ball (``ImplicitModel.project_``), which only shrinks entries, so it adds no nonzero.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from consparse.errors import ParameterError
from consparse.implicit.structure import plan_states
from consparse.models.implicit import ImplicitModel
from consparse.validation import check_int, check_range

# RigL stops moving entries at this share of the steps, so that the last support is trained on.
REGROW_END = 0.75


@dataclass(frozen=True)
class FinetuneSettings:
    """``method.finetune_epochs`` (0 keeps the paper's one shot), ``finetune_lr``, ``finetune_regrow``, ``finetune_regrow_every``.

    ``lr`` is relative: each matrix's Adam learning rate is ``lr`` times the root mean square of its
    nonzero entries, because the conversion's rescaling leaves ``A, B`` and ``C`` orders of magnitude
    apart (one absolute rate either wrecks the small entries or leaves the large ones still).
    ``regrow`` is the share of each matrix's nonzeros moved at the first update (0: the support is fixed).
    """

    epochs: int = 0
    lr: float = 1.0e-2
    regrow: float = 0.0
    regrow_every: int = 100

    def validate(self, prefix: str = "") -> None:
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise ParameterError(f"{prefix}finetune_epochs", f"expected an integer >= 0 (0: the one-shot refit only), got {self.epochs!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            raise ParameterError(f"{prefix}finetune_lr", f"expected a learning rate > 0, got {self.lr!r}")
        check_range(f"{prefix}finetune_regrow", self.regrow, 0.0, 1.0, high_inclusive=False)
        check_int(f"{prefix}finetune_regrow_every", self.regrow_every, 1)

    def regrow_fraction(self, step: int, total_steps: int) -> float:
        """The share of each matrix's nonzeros to move before ``step`` (0 where nothing moves)."""
        end = REGROW_END * total_steps
        if not self.regrow or step == 0 or step % self.regrow_every or step >= end:
            return 0.0
        return self.regrow / 2 * (1 + math.cos(math.pi * step / end))


@dataclass
class FinetuneStatistics:
    """What a fine-tuning did: the epochs' mean losses, and the entries the regrowth moved."""

    epoch_losses: list[float] = field(default_factory=list)
    regrow_updates: int = 0
    moved: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"epoch_losses": self.epoch_losses, "regrow_updates": self.regrow_updates, "moved": self.moved}


def support_masks(model: ImplicitModel) -> dict[str, torch.Tensor]:
    """The nonzero pattern of each of ``A, B, C, D``: the entries fine-tuning may change."""
    return {name: weight.detach() != 0 for name, weight in model.sparsifiable_weights().items()}


def movable_masks(model: ImplicitModel) -> dict[str, torch.Tensor]:
    """Where the regrowth may drop or grow an entry: ``A``, and ``B`` and ``D`` but for their bias columns."""
    masks = {name: torch.full_like(weight, name != "C", dtype=torch.bool) for name, weight in model.sparsifiable_weights().items()}
    if model.bias:
        masks["B"][:, model.input_size] = False
        masks["D"][:, model.input_size] = False
    return masks


def drop_dead_states_(model: ImplicitModel) -> int:
    """Zero the rows and columns of the states the deployed form drops (no output changes); how many."""
    plan = plan_states(model.A.detach(), model.B.detach(), model.C.detach(), model.input_size if model.bias else None)
    dead = torch.tensor(plan.zero_states + plan.unobserved_states, dtype=torch.long, device=model.A.device)
    with torch.no_grad():
        model.A[dead] = 0
        model.A[:, dead] = 0
        model.B[dead] = 0
        model.C[:, dead] = 0
    return int(dead.numel())


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


def _average_gradients_(model: ImplicitModel) -> None:
    """Under DDP average the gradients, so that every rank's copy (and every regrowth) stays the same."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    for weight in model.sparsifiable_weights().values():
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        if world > 1:
            dist.all_reduce(weight.grad)
            weight.grad.div_(world)


def move_support_(weight: torch.Tensor, mask: torch.Tensor, movable: torch.Tensor, fraction: float,
                  moments: dict[str, torch.Tensor]) -> int:
    """Move ``fraction`` of the movable kept entries of ``weight`` from its smallest to its largest gradients.

    ``mask`` and ``weight`` change in place; moved places start at 0, and so do Adam's ``moments`` there.
    Returns how many entries moved.
    """
    flat_mask, flat_movable = mask.view(-1), movable.view(-1)
    kept = flat_mask & flat_movable
    count = int(fraction * int(kept.sum()))
    if count == 0:
        return 0
    magnitude = torch.where(kept, weight.detach().abs().view(-1), torch.full_like(weight.view(-1), math.inf))
    dropped = torch.topk(magnitude, count, largest=False).indices
    flat_mask[dropped] = False
    candidates = flat_movable & ~flat_mask
    score = torch.where(candidates, weight.grad.abs().view(-1), torch.full_like(weight.view(-1), -math.inf))
    grown = torch.topk(score, count).indices
    flat_mask[grown] = True
    with torch.no_grad():
        changed = torch.cat([dropped, grown])
        weight.view(-1)[changed] = 0
        for moment in moments.values():
            if isinstance(moment, torch.Tensor) and moment.shape == weight.shape:
                moment.view(-1)[changed] = 0
    return count - int(torch.isin(grown, dropped).sum())


def finetune_on_support(
    model: ImplicitModel,
    batches: Sized,
    settings: FinetuneSettings,
    device: torch.device | str = "cpu",
) -> FinetuneStatistics:
    """Train the nonzero entries of ``model`` in place on ``(inputs, targets)`` batches.

    Cross-entropy on the labels, Adam on ``A, B, C, D`` (rates relative to each matrix's entries)
    with masked gradients; no matrix gains nonzeros (with ``settings.regrow`` they move), and
    ``||A||_inf <= model.kappa`` holds after every step.
    """
    statistics = FinetuneStatistics()
    if not settings.epochs:
        return statistics
    drop_dead_states_(model)
    masks, movable = support_masks(model), movable_masks(model)
    named = model.sparsifiable_weights()
    statistics.moved = dict.fromkeys(named, 0)
    optimizer = torch.optim.Adam([{"params": [weight], "lr": settings.lr * _typical_entry(weight)} for weight in named.values()])
    loss_function = nn.CrossEntropyLoss()
    was_training = model.training
    model.train()
    total_steps, step = settings.epochs * len(batches), 0
    sampler = getattr(batches, "sampler", None)
    for epoch in range(settings.epochs):
        # As Lightning does before each epoch: otherwise every epoch would draw the first one's order.
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in batches:
            inputs, targets = batch[0].to(device), batch[1].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(inputs), targets)
            loss.backward()
            _average_gradients_(model)
            fraction = settings.regrow_fraction(step, total_steps)
            if fraction:
                statistics.regrow_updates += 1
                for name, weight in named.items():
                    statistics.moved[name] += move_support_(weight, masks[name], movable[name], fraction, optimizer.state[weight])
            for name, weight in named.items():
                weight.grad.mul_(masks[name])
            optimizer.step()
            _restrict_(model, masks)
            step += 1
            total += float(loss.detach()) * len(targets)
            count += len(targets)
        statistics.epoch_losses.append(total / max(count, 1))
    model.train(was_training)
    for weight in named.values():
        weight.grad = None
    return statistics
