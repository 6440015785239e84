"""Writing results.json: the user's umask decides its mode, the write is atomic, config values are JSON."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from consparse.atomic_write import write_atomically
from consparse.report.results import read_results, write_results

FAILED = {"method": "l0", "model": "mlp", "dataset": "digits", "seed": 0, "status": "failed", "error": "boom"}


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
