"""The experiment loggers of ``logger=...``, and what a W&B run is told about its job.

Local files (``results.json``, the CSV log) stay the source of truth; a W&B run mirrors them so
that runs can be filtered, grouped and compared in the W&B UI. It carries:

* config: the whole resolved job config, flattened to dotted keys (``method.target_density``),
  plus the job's identity (``method``, ``model``, ``dataset``, ``seed``, ``target_density``,
  ``experiment``) as top-level keys;
* tags: the identity again, as ``key:value`` (``method:sfw``), beside ``logger.wandb.tags``;
* name and group, unless the config sets them: ``<method>-<model>-<dataset>-d<target>-s<seed>``;
  the jobs of one multirun share the sweep directory's name as their group;
* summary: every scalar of ``results.json`` under its own name (``test_accuracy``, ``density``,
  ``params``, ``macs``, ``latency_ms``, ``train_seconds``, nested ones dotted:
  ``method_metrics.expected_density``); a failed job's ``status`` and ``error``;
* the compression curve as a table (``compression_curve``) and a line plot of test accuracy
  against density per kind (``compression_curve_plot``);
* with ``logger.wandb.log_model`` on, the exported model (``export/``) as a ``model`` artifact
  named ``export-<run id>``, beside the checkpoints Lightning uploads itself.

Under a W&B sweep agent the run id is the agent's (wandb ignores any other); elsewhere it is kept in
``<run dir>/wandb_id.txt`` so that a resumed run continues the same W&B run.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from consparse.compress.export import EXPORT_DIR
from consparse.config import job_identity
from consparse.errors import ConfigError
from consparse.report.results import CURVE_KEYS

WANDB_ID_FILE = "wandb_id.txt"
# The results.json scalars also logged as ``final/<key>`` metrics to every logger (the CSV log too).
FINAL_METRICS = ("test_accuracy", "density", "params", "macs", "latency_ms", "train_seconds")
# Too long for a summary value; the local results.json keeps it.
NOT_SUMMARIZED = ("traceback",)


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What the job is, in the names of the config groups; ``experiment`` is the preset, if any."""
    experiment = None
    if HydraConfig.initialized():
        experiment = HydraConfig.get().runtime.choices.get("experiment")
    return {
        **job_identity(cfg),
        "target_density": OmegaConf.select(cfg, "method.target_density"),
        "experiment": experiment,
    }


def instantiate_logger(node: DictConfig, cfg: DictConfig, run_dir: Path) -> Any:
    """The logger a ``logger.<name>`` node describes; a W&B run is started and told its config here,
    so that a missing account stops the job before any data is read."""
    if not is_wandb(node):
        return hydra.utils.instantiate(node)
    identity = run_identity(cfg)
    overrides: dict[str, Any] = {"tags": [*(node.get("tags") or []), *identity_tags(identity)]}
    if node.get("name") is None:
        overrides["name"] = run_name(identity)
    sweep_dir = _multirun_sweep_dir()
    if node.get("group") is None and sweep_dir is not None:
        overrides["group"] = sweep_dir.name
    if node.get("id") is None and not os.environ.get("WANDB_SWEEP_ID"):
        id_file = run_dir / WANDB_ID_FILE
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        overrides.update(id=id_file.read_text().strip(), resume="allow")
    logger = hydra.utils.instantiate(node, **overrides)
    experiment = _start(logger)
    if _is_wandb_run(experiment):
        # allow_val_change: a sweep agent has already set its swept keys, and a resumed run its config.
        experiment.config.update({**flatten(OmegaConf.to_container(cfg, resolve=True)), **identity},
                                 allow_val_change=True)
    return logger


def is_wandb(node: Mapping[str, Any]) -> bool:
    return str(node.get("_target_", "")).endswith("WandbLogger")


def identity_tags(identity: Mapping[str, Any]) -> list[str]:
    return [f"{key}:{value}" for key, value in identity.items() if value is not None]


def run_name(identity: Mapping[str, Any]) -> str:
    parts = [identity["method"], identity["model"], identity["dataset"]]
    if identity.get("target_density") is not None:
        parts.append(f"d{identity['target_density']}")
    return "-".join([*map(str, parts), f"s{identity['seed']}"])


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and empty mappings are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def summary_of(results: Mapping[str, Any]) -> dict[str, Any]:
    """Every scalar of a results dictionary (nested ones dotted); lists go to tables instead."""
    return {
        key: value
        for key, value in flatten(results).items()
        if key not in NOT_SUMMARIZED and (value is None or isinstance(value, (bool, int, float, str)))
    }


def log_results(loggers: Iterable[Any], results: Mapping[str, Any], run_dir: Path, step: int, log_model: Any) -> None:
    """The final figures to every logger; a W&B run also gets its summary, curve and export."""
    loggers = list(loggers)
    final = {f"final/{key}": float(results[key]) for key in FINAL_METRICS if isinstance(results.get(key), (int, float))}
    for logger in loggers:
        logger.log_metrics(final, step=step)
        logger.save()
    for logger in loggers:
        if isinstance(logger, WandbLogger) and _is_wandb_run(logger.experiment):
            _report_to_wandb(logger.experiment, results, run_dir, bool(log_model))


def finish_wandb(failure: Mapping[str, Any] | None = None) -> None:
    """Close this process's W&B run (a multirun must start a new one per job, wandb #1314); a failed
    job's run is marked failed, with the error in its summary."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is None:
        return
    if failure is not None:
        wandb.run.summary.update({key: failure.get(key) for key in ("status", "error")})
    wandb.finish(exit_code=1 if failure is not None else None)


def _report_to_wandb(run: Any, results: Mapping[str, Any], run_dir: Path, log_model: bool) -> None:
    import wandb

    run.summary.update(summary_of(results))
    curve = results.get("compression_curve") or []
    if curve:
        table = wandb.Table(columns=list(CURVE_KEYS), data=[[point.get(key) for key in CURVE_KEYS] for point in curve])
        plot = wandb.plot.line(table, x="density", y="test_accuracy", stroke="kind",
                               title="compression curve: test accuracy vs density, without retraining")
        run.log({"compression_curve": table, "compression_curve_plot": plot})
    export = run_dir / EXPORT_DIR
    if log_model and results.get("export") and export.is_dir():
        metadata = {key: results.get(key) for key in ("method", "model", "dataset", "seed", "target_density",
                                                      "test_accuracy", "density", "params", "macs")}
        artifact = wandb.Artifact(f"export-{run.id}", type="model", metadata=metadata,
                                  description="the deployed model as exported by consparse (export/model.json)")
        artifact.add_dir(str(export))
        run.log_artifact(artifact, aliases=["latest"])


def _start(logger: Any) -> Any:
    """Start the W&B run now (``logger.experiment``; a no-op object on ranks > 0)."""
    import wandb

    try:
        return logger.experiment
    except wandb.errors.UsageError as error:
        raise ConfigError(
            "logger.wandb.mode",
            f"online logging needs a W&B account ({error}); log in (`wandb login`, WANDB_API_KEY) or, "
            "without an account, use WANDB_MODE=offline (sync later with `wandb sync`) or WANDB_MODE=disabled",
        ) from None


def _is_wandb_run(experiment: Any) -> bool:
    """A W&B run of this process (rank 0); other ranks get Lightning's no-op stand-in."""
    from wandb.sdk.wandb_run import Run

    return isinstance(experiment, Run)


def _multirun_sweep_dir() -> Path | None:
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir)
    return None
