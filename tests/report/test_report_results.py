"""The results.json contract: the ``Results`` fields, validation, and writing (the user's umask
decides the mode, the write is atomic, config values are JSON)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from consparse.atomic_write import write_atomically
from consparse.report.results import (
    COMPLETED_KEYS,
    COUNT_KEYS,
    NUMBER_KEYS,
    REQUIRED_KEYS,
    Results,
    ResultsSchemaError,
    read_results,
    validate_results,
    write_results,
)

WHAT_RAN = {"method": "l0", "model": "mlp", "dataset": "digits", "seed": 0,
            "setting": {"name": None, "model": None}, "variant": "l0"}  # fmt: skip
FAILED = {**WHAT_RAN, "status": "failed", "error": "boom"}
MEASURED = {
    "test_accuracy": 0.9, "density": 0.1, "per_layer_density": {"0.weight": 0.1}, "params": 10, "dense_params": 100,
    "macs": 9, "dense_macs": 90, "latency_ms": 0.1, "dense_latency_ms": 0.2, "latency": {"threads": 1},
    "compression_curve": [], "method_metrics": {}, "train_seconds": 1.5, "epochs": 2, "export": None,
}  # fmt: skip


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_results_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        path = write_results(tmp_path, FAILED)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_config_list_is_written_as_a_list(tmp_path: Path) -> None:
    write_results(tmp_path, {**FAILED, "target_density": OmegaConf.create([0.5, 0.25])})
    assert read_results(tmp_path)["target_density"] == [0.5, 0.25]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    write_atomically(target, "old")

    def full_disk(descriptor: int) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="no space"):
        write_atomically(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_the_key_lists_are_the_dataclass_fields() -> None:
    assert REQUIRED_KEYS == ("method", "model", "dataset", "seed", "status", "setting", "variant")
    assert set(COMPLETED_KEYS) == {*MEASURED, "target_density"}
    assert {"seed", "params", "dense_macs", "epochs"} <= set(COUNT_KEYS) < set(NUMBER_KEYS)
    assert "test_accuracy" in NUMBER_KEYS and "test_accuracy" not in COUNT_KEYS and "method" not in NUMBER_KEYS


def test_results_round_trip_through_json(tmp_path: Path) -> None:
    results = Results(**WHAT_RAN, status="completed", overrides=["seed=0"], method_config={"penalty": 0.1},
                      target_density=0.1, **MEASURED, extra={"teacher": "dense"})  # fmt: skip
    write_results(tmp_path, results)
    on_disk = read_results(tmp_path)
    assert on_disk["schema_version"] == 2 and on_disk["teacher"] == "dense" and on_disk["export"] is None
    assert "error" not in on_disk and "traceback" not in on_disk  # a completed run has neither
    assert Results.from_json(on_disk) == results


def test_a_failed_run_writes_what_ran_and_why_and_no_measurements() -> None:
    written = Results(**WHAT_RAN, status="failed", error="boom").to_json()
    assert written == {"schema_version": 2, **WHAT_RAN, "status": "failed", "overrides": [], "method_config": {},
                       "target_density": None, "error": "boom", "traceback": None}  # fmt: skip


def test_validation_names_every_problem() -> None:
    without_variant = {key: value for key, value in WHAT_RAN.items() if key != "variant"}
    with pytest.raises(ResultsSchemaError) as raised:
        validate_results({**without_variant, "status": "completed", **MEASURED, "density": 1.5})
    message = str(raised.value)
    assert "missing key 'variant'" in message and "'density' must be a fraction in [0, 1], got 1.5" in message
    validate_results({**WHAT_RAN, "status": "completed"}, measurements=False)
    with pytest.raises(ResultsSchemaError, match="a failed run must say why in 'error'"):
        validate_results({**WHAT_RAN, "status": "failed"})


def test_val_accuracy_is_written_null_checked_and_optional_in_older_files(tmp_path: Path) -> None:
    completed = Results(**WHAT_RAN, status="completed", target_density=0.1, **MEASURED)
    # A completed run without a held-out split says so with null rather than leaving the key out.
    assert completed.to_json()["val_accuracy"] is None
    write_results(tmp_path, Results(**WHAT_RAN, status="completed", target_density=0.1, **MEASURED, val_accuracy=0.93))
    assert read_results(tmp_path)["val_accuracy"] == 0.93
    with pytest.raises(ResultsSchemaError, match="'val_accuracy' must be a fraction in \\[0, 1\\], got 93"):
        validate_results({**WHAT_RAN, "status": "completed", **MEASURED, "target_density": 0.1, "val_accuracy": 93})
    # A schema-2 file written before the key existed still follows the contract.
    older = {key: value for key, value in completed.to_json().items() if key != "val_accuracy"}
    validate_results(older)
    assert Results.from_json(older).val_accuracy is None
