"""``python eval.py run=<run dir>``: measure a finished run's exported model again, without training.

The deployed model is rebuilt from ``<run dir>/export`` with ``load_exported`` (no pickle), the
data and settings come from the run's own config (Hydra's record, ``.hydra/config.yaml``), and the measurement is the one training ends with (``consparse.measure``):
test accuracy, density, params and MACs against the dense architecture, CPU latency beside it, and
the compression curve. Results go to ``<run dir>/eval_results.json`` (``output=`` elsewhere); the
run's ``results.json`` is never touched, and an earlier evaluation is kept as
``eval_results.previous-<n>.json``.

Two things differ from the numbers training wrote: the compression curve prunes the exported
(deployed) model, since the trained model before ``finalize`` is not exported (the same for
``dense``, ``magnitude`` and ``sfw`` without a target; for ``l0`` the purged model instead of the
gated one); and the dense reference is the architecture freshly built, which has the trained
reference's shapes (so params, MACs and density are the same) but not its weights.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from consparse.compress.export import DESCRIPTION_FILE, EXPORT_DIR, load_exported
from consparse.compress.nm import exported_pattern
from consparse.config import instantiate_node, job_description, job_identity
from consparse.errors import ConfigError, ConsparseError
from consparse.evaluation import EvaluationSettings
from consparse.measure import measure_deployment
from consparse.methods import Deployment
from consparse.models import build_model
from consparse.report.results import RESULTS_FILE, read_results, write_results_file
from consparse.run_dir import archive_previous

EVAL_RESULTS_FILE = "eval_results.json"
RUN_CONFIG = Path(".hydra") / "config.yaml"
USAGE = """\
usage: python eval.py run=<run dir> [output=<file>] [key=value ...]

Re-evaluate a finished run's exported model without training: test accuracy, density, params,
MACs, CPU latency and the compression curve, measured as at the end of training. Results go to
<run dir>/eval_results.json (output=<file> elsewhere); the run's results.json is left alone.

  run=<dir>      the run directory (or its export/ directory)
  output=<file>  where to write the results (default <run dir>/eval_results.json)
  key=value      changes to the run's config, e.g. dataset.root=../shared/data,
                 evaluation.latency.threads=4, evaluation.compression_grid.unstructured=[0.5,0.9],
                 evaluation.device=cpu
"""


def locate(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(run dir, export dir)`` for a run directory or its export directory."""
    given = Path(path).expanduser()
    if (given / DESCRIPTION_FILE).is_file():
        return given.parent, given
    if (given / EXPORT_DIR / DESCRIPTION_FILE).is_file():
        return given, given / EXPORT_DIR
    raise ConfigError(
        "run",
        f"no exported model at {given} (expected {given / EXPORT_DIR / DESCRIPTION_FILE}); give a run "
        "directory of a finished run with evaluation.export=true, or its export/ directory",
    )


def run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's config as Hydra recorded it, with ``overrides`` (``key=value``) applied."""
    recorded = run_dir / RUN_CONFIG
    if not recorded.is_file():
        raise ConfigError(
            "run",
            f"{recorded} is missing: the data and settings of the run come from Hydra's record of its config "
            "(an export copied elsewhere needs the run directory's .hydra/ beside it)",
        )
    cfg = OmegaConf.load(recorded)
    # Hydra's record leaves the run directory as an interpolation into Hydra's runtime.
    cfg.paths.output_dir = str(run_dir)
    OmegaConf.set_struct(cfg, True)
    for override in overrides:
        key, _, value = override.partition("=")
        try:
            OmegaConf.update(cfg, key, yaml_value(value), merge=False)
        except OmegaConfBaseException:
            raise ConfigError(key, f"not a key of the run's config; see {recorded}") from None
    return cfg


def yaml_value(text: str) -> Any:
    """A command-line value as YAML reads it (``0.5`` a float, ``[0.5,0.9]`` a list, ``null``), else the text."""
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def evaluate(run: str | os.PathLike[str], overrides: list[str], output: str | None = None) -> tuple[dict[str, Any], Path]:
    """Measure the export of ``run``; returns the results and the file they were written to."""
    run_dir, export_dir = locate(run)
    cfg = run_config(run_dir, overrides)
    settings = EvaluationSettings.from_config(cfg.evaluation)
    settings.export = False
    if settings.device == "auto" and not torch.cuda.is_available():
        settings.device = "cpu"  # a GPU run re-evaluated on a machine without one
    target = Path(output).expanduser() if output else run_dir / EVAL_RESULTS_FILE
    if target.name == RESULTS_FILE:
        raise ConfigError("output", f"{target} would be taken for a training run's results; choose another name")

    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate_node(cfg.dataset, "dataset")
    datamodule.check_available()
    deployed = load_exported(export_dir)
    reference = build_model(cfg.model, datamodule.info)
    # An export keeps no training state: the curve prunes the deployed model and there are no method figures.
    deployment = Deployment(deployed, reference, compression_base=deployed, metrics=dict,
                            nm_pattern=exported_pattern(export_dir))
    measured = measure_deployment(cfg, deployment, datamodule, settings, run_dir)
    training = read_results(run_dir) if (run_dir / RESULTS_FILE).is_file() else {}
    results = {
        **job_identity(cfg),
        **job_description(cfg),
        "status": "completed",
        "target_density": OmegaConf.select(cfg, "method.target_density"),
        **measured,
        # The training run's figures, for the table and for a results.json-shaped file.
        "train_seconds": training.get("train_seconds"),
        "epochs": training.get("epochs"),
        "export": str(export_dir),
        "evaluation_of": {
            "run_dir": str(run_dir),
            "overrides": overrides,
            "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training_test_accuracy": training.get("test_accuracy"),
        },
    }
    write_eval_results(target, results)
    return results, target


def write_eval_results(target: Path, results: dict[str, Any]) -> None:
    """Validate against the results.json contract and write atomically, keeping an earlier file."""
    archive_previous(target)
    write_results_file(target, results)


def format_evaluation(results: dict[str, Any], target: Path) -> str:
    trained = results["evaluation_of"]["training_test_accuracy"]
    rows = [
        ("method / model / data", f"{results['method']} / {results['model']} / {results['dataset']} (seed {results['seed']})"),
        ("test accuracy", f"{100 * results['test_accuracy']:.2f} %"
                          + (f" (training run: {100 * trained:.2f} %)" if isinstance(trained, (int, float)) else "")),
        ("density", f"{results['density']:.4f}"),
        ("params / MACs", f"{results['params']} of {results['dense_params']} / {results['macs']} of {results['dense_macs']}"),
        ("latency", f"{results['latency_ms']:.3f} ms vs {results['dense_latency_ms']:.3f} ms dense"),
        ("curve points", str(len(results["compression_curve"]))),
        ("results", str(target)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(["", "consparse evaluation"] + [f"  {name.ljust(width)}  {value}" for name, value in rows])


def parse_arguments(arguments: list[str]) -> tuple[str, str | None, list[str]]:
    """``(run, output, config overrides)`` from ``key=value`` arguments; ConfigError when malformed."""
    run, output, overrides = None, None, []
    for argument in arguments:
        key, has_value, value = argument.partition("=")
        if not has_value or not key:
            raise ConfigError(argument, "expected key=value (python eval.py --help)")
        if key == "run":
            run = value
        elif key == "output":
            output = value
        else:
            overrides.append(argument)
    if not run:
        raise ConfigError("run", "missing; give the run directory to evaluate: python eval.py run=<run dir>")
    return run, output, overrides


def main(arguments: list[str]) -> int:
    if any(argument in ("-h", "--help") for argument in arguments):
        print(USAGE, end="")
        return 0
    try:
        run, output, overrides = parse_arguments(arguments)
        results, target = evaluate(run, overrides, output)
    except ConsparseError as error:
        print(f"consparse: error: {error}", file=sys.stderr)
        return 2
    print(format_evaluation(results, target), flush=True)
    return 0
