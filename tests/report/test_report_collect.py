"""Collecting a sweep's runs from their results.json files (consparse.report.collect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from consparse.errors import ConfigError
from consparse.report import collect_results, write_report
from consparse.report.collect import NoResultsError

from .conftest import markdown_table, row_for


def test_collect_results_reads_every_run(sweep: Path) -> None:
    rows = collect_results(sweep)
    assert len(rows) == 15
    assert all(Path(row["run_dir"]).is_absolute() and Path(row["run_dir"]).is_dir() for row in rows)
    penalty = next(row for row in rows if row["method"] == "l0_penalty")
    assert "method.penalty=0.01" in penalty["overrides"]
    assert penalty["target_density"] is None
    failed = [row for row in rows if row["status"] != "completed"]
    assert [(r["method"], r["seed"], r["status"]) for r in failed] == [("l0", 2, "failed")]
    # A failed run records what ran as a completed one does.
    assert failed[0]["target_density"] == 0.05 and failed[0]["variant"] == "l0"
    assert all("schema_version" not in row for row in rows)


def test_unreadable_and_missing_results_are_failed_rows(sweep: Path) -> None:
    broken = sweep / "20"
    (broken / ".hydra").mkdir(parents=True)
    # What a run writes into its directory before training (consparse.run_dir): the report's only
    # source for a run whose results.json cannot be read.
    (broken / "run_identity.yaml").write_text(
        yaml.safe_dump({"seed": 5, "method": {"name": "sfw", "target_density": 0.1}, "model": {"name": "mlp"}, "dataset": {"name": "mnist"}})
    )
    (broken / "results.json").write_text('{"method": "sfw", "status": ')
    crashed = sweep / "21"
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "run_identity.yaml").write_text(yaml.safe_dump({"seed": 3, "method": {"name": "magnitude"}}))
    contract = sweep / "22"
    contract.mkdir()
    (contract / "results.json").write_text(json.dumps({"schema_version": 2, "method": "sfw", "status": "done"}))

    paths = write_report(sweep)
    markdown = paths["markdown"].read_text()
    failed = {row["run dir"]: row for row in markdown_table(markdown, "## Failed or missing runs (4)")}
    assert failed["20"]["status"] == "failed" and failed["20"]["error (first line)"].startswith("could not read results.json:")
    assert (failed["20"]["method"], failed["20"]["seed"], failed["20"]["target"]) == ("sfw", "5", "0.100")
    assert failed["21"]["status"] == "missing" and failed["21"]["method"] == "magnitude"
    assert failed["21"]["model"] == "?" and "no results.json" in failed["21"]["error (first line)"]
    assert failed["22"]["status"] == "failed" and failed["22"]["method"] == "sfw"
    assert "missing key 'model'" in failed["22"]["error (first line)"] and "status must be one of" in failed["22"]["error (first line)"]
    rows = markdown_table(markdown, "## mnist / mlp")
    assert row_for(rows, "sfw", "0.100")["n"] == "2 (+1 failed)"


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NoResultsError, match=f"no results.json found below {tmp_path}"):
        write_report(tmp_path)
    with pytest.raises(NoResultsError, match="not a directory"):
        collect_results(tmp_path / "absent")


def test_results_written_before_setting_and_variant_are_refused(sweep: Path) -> None:
    """Grouped by method alone, l0_penalty at two penalties would be averaged as if they were seeds."""
    for path in [sweep / "0" / "results.json", sweep / "penalty" / "0" / "results.json"]:
        results = json.loads(path.read_text())
        path.write_text(json.dumps({key: value for key, value in results.items() if key not in ("setting", "variant", "schema_version")}))
    with pytest.raises(ConfigError, match=r"results.json: 2 of the 15 runs below .* \(schema_version < 2\)"):
        collect_results(sweep)
