"""What a W&B run records (consparse.loggers), read back from the offline run's own transaction log.

No account and no network: every run here is offline in the test's tmp dir. The ``.wandb`` file an
offline run writes is what ``wandb sync`` uploads; reading its records back shows exactly what the
W&B UI would get (config, tags, group, summary, tables, plots, artifacts).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from consparse.callbacks import TrainTimer
from consparse.loggers import WANDB_ID_FILE, finish_wandb, flatten, instantiate_logger, run_name, summary_of
from consparse.report.results import read_results
from consparse.train import _build_trainer, run

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# The framing of wandb's transaction log (a LevelDB-style log): a 7-byte file header, then records
# in 32 KiB blocks, each chunk with a 7-byte header (crc32, length, type); FULL=1, FIRST=2, MIDDLE=3, LAST=4.
BLOCK = 32768
CHUNK_HEADER = struct.Struct("<IHB")
NO_CURVE = [f"evaluation.compression_grid.{kind}=[]" for kind in ("unstructured", "filter", "lowrank")]


@dataclass
class OfflineRun:
    """What an offline W&B run recorded, folded the way the W&B server folds it."""

    run_id: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[Any] = field(default_factory=list)
    exit_code: int | None = None


def _records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, pending = 7, b""
    while position + CHUNK_HEADER.size <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK_HEADER.size:
            position += left
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, position)
        start = position + CHUNK_HEADER.size
        assert start + length <= len(data), f"{path} ends inside a record"
        pending += data[start : start + length]
        position = start + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def read_offline_run(run_dir: Path) -> OfflineRun:
    import wandb

    # wandb.finish returns before wandb's service has flushed the log; its teardown waits for that.
    wandb.teardown()
    (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    result = OfflineRun()
    for record in _records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            result.run_id, result.group, result.name = record.run.run_id, record.run.run_group, record.run.display_name
            result.tags = list(record.run.tags)
            result.config.update({_key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            result.config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            result.summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "history":
            result.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "artifact":
            result.artifacts.append(record.artifact)
        elif kind == "exit":
            result.exit_code = record.exit.exit_code
    assert result.exit_code is not None, f"{log_file} has no exit record: the run was not finished"
    return result


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline, with every directory it writes (settings, cache, artifact staging) in tmp."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    for variable, name in [("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_CACHE_DIR", "cache"),
                           ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")]:
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / name))
    import wandb

    # wandb reads its environment once per process (a fresh process under an agent): start afresh.
    wandb.teardown()


def test_a_run_logs_config_identity_summary_curve_and_export(make_config, tmp_path: Path, offline) -> None:
    cfg = make_config("method=magnitude", "method.target_density=0.5", "logger=wandb", "logger.wandb.log_model=true")
    results = run(cfg)
    run_dir = tmp_path / "run"
    logged = read_offline_run(run_dir)

    # The whole resolved config, flattened, and the identity as top-level keys and tags.
    expected_config = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert {key: logged.config[key] for key in expected_config} == expected_config
    assert logged.config["method.target_density"] == 0.5 and logged.config["trainer.max_epochs"] == 1
    identity = {"method": "magnitude", "model": "mlp", "dataset": "digits", "seed": 0, "target_density": 0.5,
                "experiment": None}
    assert {key: logged.config[key] for key in identity} == identity
    assert {"method:magnitude", "model:mlp", "dataset:digits", "seed:0", "target_density:0.5"} <= set(logged.tags)
    assert logged.name == "magnitude-mlp-digits-d0.5-s0"
    assert logged.run_id == (run_dir / WANDB_ID_FILE).read_text().strip()

    # Every results.json scalar is in the summary under its own name.
    on_disk = read_results(run_dir)
    for key in ("test_accuracy", "density", "params", "macs", "latency_ms", "train_seconds", "epochs", "status"):
        assert logged.summary[key] == on_disk[key], key
    assert logged.summary["method_metrics.finetune_epochs"] == on_disk["method_metrics"]["finetune_epochs"]
    layer, density = next(iter(on_disk["per_layer_density"].items()))
    assert logged.summary[f"per_layer_density.{layer}"] == density

    # The compression curve: a table (its rows are results.json's curve) and a line plot over it.
    (table_entry,) = [row for row in logged.history if "compression_curve._type" in row]
    table = json.loads((run_dir / "wandb").glob(f"offline-run-*/files/{table_entry['compression_curve.path']}")
                       .__next__().read_text())
    assert table["columns"] == ["kind", "amount", "test_accuracy", "density", "params", "macs"]
    assert table["data"] == [[point[key] for key in table["columns"]] for point in results["compression_curve"]]
    plot = logged.config["_wandb.visualize.compression_curve_plot"]
    assert plot["panel_config"]["fieldSettings"] == {"x": "density", "y": "test_accuracy", "stroke": "kind"}

    # The exported model as a model artifact holding exactly the export directory's files (Lightning
    # uploads the checkpoint as model-<run id> beside it).
    (export,) = [artifact for artifact in logged.artifacts if artifact.name == f"export-{logged.run_id}"]
    assert export.type == "model"
    assert {entry.path for entry in export.manifest.contents} == {p.name for p in (run_dir / "export").iterdir()}
    assert json.loads(export.metadata)["test_accuracy"] == on_disk["test_accuracy"]
    assert logged.exit_code == 0


def test_no_model_artifact_unless_log_model(make_config, tmp_path: Path, offline) -> None:
    run(make_config("method=dense", "logger=wandb", *NO_CURVE))
    logged = read_offline_run(tmp_path / "run")
    assert not [artifact for artifact in logged.artifacts if artifact.name.startswith("export-")]
    assert not [row for row in logged.history if "compression_curve._type" in row], "no curve, no table"
    assert logged.summary["test_accuracy"] == read_results(tmp_path / "run")["test_accuracy"]


def test_disabled_wandb_runs_the_same_path_and_writes_nothing(make_config, tmp_path: Path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    wandb.teardown()
    results = run(make_config("method=magnitude", "logger=wandb", "logger.wandb.log_model=true"))
    assert results["status"] == "completed" and results["compression_curve"]
    assert not list((tmp_path / "run").glob("wandb/*run-*"))


def test_a_failed_job_is_a_failed_run_with_its_error(make_config, tmp_path: Path, offline) -> None:
    # A fine-tuning budget larger than the run fails at fit start, after the W&B run has started.
    cfg = make_config("method=magnitude", "method.finetune_epochs=3", "logger=wandb")
    with pytest.raises(Exception, match="finetune_epochs"):
        run(cfg)
    logged = read_offline_run(tmp_path / "run")
    assert logged.summary["status"] == "failed" and "finetune_epochs" in logged.summary["error"]
    assert logged.exit_code == 1


def test_jobs_of_a_multirun_share_the_sweep_dir_as_group(tmp_path: Path, offline) -> None:
    sweep_dir = tmp_path / "multiruns" / "18-04-05-123456"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["trainer.max_epochs=1", "method=sfw", "experiment=sfw_mnist_mlp", "logger=wandb",
                                           "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep_dir}",
                                           f"paths.output_dir={sweep_dir / '0'}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        run_dir = sweep_dir / "0"
        run_dir.mkdir(parents=True)
        job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        _build_trainer(job, run_dir, TrainTimer())
        finish_wandb()
    finally:
        HydraConfig.instance().cfg = None
    logged = read_offline_run(run_dir)
    assert logged.group == "18-04-05-123456"
    assert logged.config["experiment"] == "sfw_mnist_mlp" and "experiment:sfw_mnist_mlp" in logged.tags


def test_explicit_name_group_and_tags_win(make_config, tmp_path: Path, offline) -> None:
    cfg = make_config("method=dense", "logger=wandb", "logger.wandb.name=mine", "logger.wandb.group=g",
                      "logger.wandb.tags=[paper]")
    (tmp_path / "run").mkdir()
    try:
        instantiate_logger(cfg.logger.wandb, cfg, tmp_path / "run")
    finally:
        finish_wandb()
    logged = read_offline_run(tmp_path / "run")
    assert (logged.name, logged.group) == ("mine", "g")
    assert logged.tags[0] == "paper" and "method:dense" in logged.tags


def test_under_a_sweep_agent_the_agents_run_id_is_used(make_config, tmp_path: Path, offline, monkeypatch) -> None:
    # The agent exports the sweep and run ids; wandb.init must take the agent's id, not the run dir's.
    import wandb

    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    wandb.teardown()
    cfg = make_config("method=dense", "logger=wandb")
    (tmp_path / "run").mkdir()
    try:
        logger = instantiate_logger(cfg.logger.wandb, cfg, tmp_path / "run")
        assert logger.experiment.id == "agentrun1"
    finally:
        finish_wandb()
    assert not (tmp_path / "run" / WANDB_ID_FILE).exists()


def test_summary_keeps_scalars_and_dots_nested_keys() -> None:
    results = {"test_accuracy": 0.9, "status": "completed", "export": None, "traceback": "long",
               "method_metrics": {"kappa": 2.0, "lasso": {"iterations": 7}}, "compression_curve": [{"amount": 0.5}]}
    assert summary_of(results) == {"test_accuracy": 0.9, "status": "completed", "export": None,
                                   "method_metrics.kappa": 2.0, "method_metrics.lasso.iterations": 7}


def test_run_name_says_what_ran() -> None:
    assert run_name({"method": "dense", "model": "mlp", "dataset": "mnist", "seed": 2, "target_density": None}) == (
        "dense-mlp-mnist-s2")


@pytest.mark.slow
def test_offline_multirun_gives_each_job_its_run_in_one_group(tmp_path: Path, offline) -> None:
    import os
    import subprocess
    import sys

    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(CONF_DIR.parent / "train.py"), "-m", "seed=0,1", "method=dense", "logger=wandb",
         f"hydra.sweep.dir={sweep_dir}", "trainer.max_epochs=1", "evaluation.latency.min_run_time=0.02",
         "evaluation.latency.rounds=1", *NO_CURVE],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [read_offline_run(sweep_dir / job) for job in ("0", "1")]
    assert [logged.group for logged in runs] == ["sweep", "sweep"]
    assert [logged.config["seed"] for logged in runs] == [0, 1]
    assert runs[0].run_id != runs[1].run_id
    assert all(logged.exit_code == 0 and logged.summary["status"] == "completed" for logged in runs)
