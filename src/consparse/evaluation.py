"""Settings of the shared evaluation (the ``evaluation`` config node), validated before training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from consparse.curve_kinds import CURVE_KINDS, PATTERN_KINDS
from consparse.errors import ParameterError, config_key
from consparse.nm_pattern import parse_nm
from consparse.validation import check_choice, check_int, check_range

# Which layers the low-rank curve decomposes.
LOWRANK_LAYERS = ("all", "conv", "linear")
LATENCY_KEYS = ("threads", "batch_size", "large_batch_size", "min_run_time", "rounds", "budget_s", "min_repeats", "warmup")


@dataclass
class EvaluationSettings:
    """What is measured after training.

    Attributes:
        compression_grid: ``{kind: [amounts removed]}`` for the compression curve (empty: no curve);
            ``nm`` lists patterns ``"N:M"`` instead (``consparse.curve_kinds``).
        recalibrate_bn_batches: training batches used to re-estimate BatchNorm statistics of each
            pruned model in the curve (0: off, as in the SFW paper).
        lowrank_layers: the layers the ``lowrank`` curve decomposes: ``all`` (Linear and Conv2d),
            ``conv`` (convolutions only, the SFW authors' ``decomp_type=conv``) or ``linear``.
        latency: keyword arguments of ``compare_latency`` (threads, batch_size, min_run_time, rounds,
            budget_s, min_repeats, warmup), and ``large_batch_size``: a second measurement at that
            batch (null: none).
        export: write the deployed model under ``export/``.
        device: ``auto`` (the training accelerator's device), ``cpu`` or ``cuda``.
    """

    compression_grid: dict[str, list[float | str]] = field(default_factory=dict)
    recalibrate_bn_batches: int = 0
    lowrank_layers: str = "all"
    latency: dict[str, Any] = field(default_factory=dict)
    export: bool = True
    device: str = "auto"

    @classmethod
    def from_config(cls, node: DictConfig | dict | None) -> EvaluationSettings:
        """The settings of the ``evaluation`` node (the config boundary: errors name ``evaluation.<key>``)."""
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        with config_key("evaluation"):
            return cls._checked(raw)

    @classmethod
    def _checked(cls, raw: dict[str, Any]) -> EvaluationSettings:
        grid = raw.get("compression_grid") or {}
        for kind, amounts in grid.items():
            check_choice("compression_grid", kind, CURVE_KINDS)
            if not isinstance(amounts, list):
                raise ParameterError(f"compression_grid.{kind}", f"expected a list of fractions, got {amounts!r}")
            for amount in amounts:
                if kind in PATTERN_KINDS:
                    parse_nm(amount, f"compression_grid.{kind}")
                else:
                    check_range(f"compression_grid.{kind}", amount, 0.0, 1.0, high_inclusive=False)
        settings = cls(
            compression_grid={
                kind: [a if kind in PATTERN_KINDS else float(a) for a in amounts]
                for kind, amounts in grid.items()
                if amounts
            },
            recalibrate_bn_batches=raw.get("recalibrate_bn_batches", 0),
            lowrank_layers=raw.get("lowrank_layers", "all"),
            latency=dict(raw.get("latency") or {}),
            export=raw.get("export", True),
            device=raw.get("device", "auto"),
        )
        check_int("recalibrate_bn_batches", settings.recalibrate_bn_batches, 0)
        check_choice("lowrank_layers", settings.lowrank_layers, LOWRANK_LAYERS)
        check_choice("device", settings.device, ["auto", "cpu", "cuda"])
        _check_latency(settings.latency)
        return settings

    def resolve_device(self, accelerator: str | None) -> torch.device:
        if self.device == "cpu" or (self.device == "auto" and accelerator not in ("gpu", "cuda")):
            return torch.device("cpu")
        return torch.device("cuda")


def _check_latency(latency: dict[str, Any]) -> None:
    for key in latency:
        check_choice("latency", key, LATENCY_KEYS)
    check_int("latency.threads", latency.get("threads", 1), 1)
    check_int("latency.batch_size", latency.get("batch_size", 1), 1)
    if latency.get("large_batch_size") is not None:
        check_int("latency.large_batch_size", latency["large_batch_size"], 1)
    check_int("latency.rounds", latency.get("rounds", 1), 1)
    check_int("latency.min_repeats", latency.get("min_repeats", 1), 1)
    check_int("latency.warmup", latency.get("warmup", 0), 0)
    check_range("latency.min_run_time", latency.get("min_run_time", 1.0), 0.0, low_inclusive=False)
    if latency.get("budget_s") is not None:
        check_range("latency.budget_s", latency["budget_s"], 0.0, low_inclusive=False)
