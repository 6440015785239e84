"""``python -m consparse.report``: writes the report, fails in one line on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, *args], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_cli_writes_the_report(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_python("-m", "consparse.report", str(sweep), "--out", str(out), "--group-by", "method.penalty")
    assert done.returncode == 0, done.stderr
    assert f"markdown: {out / 'results.md'}" in done.stdout
    for name in ("results.csv", "summary.csv", "results.md", "pareto.png", "compression_curves.png"):
        assert (out / name).stat().st_size > 0
    assert "| l0_penalty | method.penalty=0.01 |" in (out / "results.md").read_text()


def test_cli_fails_clearly_on_an_empty_directory(tmp_path: Path) -> None:
    done = run_python("-m", "consparse.report", str(tmp_path))
    assert done.returncode == 1
    assert f"no results.json found below {tmp_path}" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_rejects_a_negative_tolerance(sweep: Path) -> None:
    done = run_python("-m", "consparse.report", str(sweep), "--tolerance", "-1")
    assert done.returncode == 2 and "report.tolerance" in done.stderr


def test_cli_refuses_results_older_than_the_schema_in_one_line(sweep: Path) -> None:
    path = sweep / "0" / "results.json"
    results = json.loads(path.read_text())
    for key in ("setting", "variant", "overrides", "method_config"):
        del results[key]
    path.write_text(json.dumps({**results, "schema_version": 1}))
    done = run_python("-m", "consparse.report", str(sweep))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        (
            f"consparse: error: {path}: 1 of the 15 runs below {sweep} were written before results.json said its "
            "setting and variant (schema_version < 2); rerun them, or report them with the consparse version that "
            "wrote them"
        )
    ]
    assert not (sweep / "results.md").exists()
