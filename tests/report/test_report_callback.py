"""The Hydra end-of-sweep callback: writes the report, exits 1 when a job did not complete."""

from __future__ import annotations

import csv
import logging
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from consparse.errors import ConfigError
from consparse.report.callback import ReportCallback

from .test_report_main import run_python


def test_callback_reports_the_sweep_dir_then_exits_1_for_its_failed_job(sweep: Path, capsys) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    with pytest.raises(SystemExit) as exited:
        ReportCallback().on_multirun_end(config)
    assert exited.value.code == 1
    assert "| sfw |" in (sweep / "results.md").read_text()
    assert (sweep / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert f"jobs did not complete (1 failed); see {sweep / 'results.md'}" in capsys.readouterr().err


def test_callback_returns_when_every_job_completed(sweep: Path) -> None:
    for path in sweep.rglob("results.json"):
        if '"failed"' in path.read_text():
            path.unlink()
            for hydra_record in path.parent.glob(".hydra"):
                for file in hydra_record.iterdir():
                    file.unlink()
                hydra_record.rmdir()
    ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert "| sfw |" in (sweep / "results.md").read_text()


def test_callback_never_raises_an_exception(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:
    with caplog.at_level(logging.WARNING, logger="consparse.report.callback"):
        # No job wrote results: the report cannot be written (a warning) and the sweep failed (exit 1).
        with pytest.raises(SystemExit) as exited:
            ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
        ReportCallback().on_multirun_end(OmegaConf.create({"seed": 0}))
    assert exited.value.code == 1 and "no job of the sweep completed" in capsys.readouterr().err
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert f"no results.json found below {tmp_path}" in messages[0]
    assert all(m.startswith("could not write the sweep report") for m in messages)


def test_callback_checks_its_tolerance() -> None:
    with pytest.raises(ConfigError, match="hydra.callbacks.report.tolerance"):
        ReportCallback(tolerance=-0.5)


def test_callback_runs_at_the_end_of_a_real_multirun(tmp_path: Path) -> None:
    # A timestamp to the microsecond, as in conf/config.yaml: the callback must see the directory
    # the jobs were launched into, not a second resolution of ${now:}.
    sweeps = tmp_path / "multirun"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            seed: 0
            method: {{name: sfw, target_density: 0.1}}
            hydra:
              sweep: {{dir: "{sweeps}/${{now:%H-%M-%S-%f}}", subdir: "${{hydra.job.num}}"}}
              callbacks:
                report: {{_target_: consparse.report.callback.ReportCallback}}
            """
        )
    )
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """\
            import hydra
            from hydra.core.hydra_config import HydraConfig

            from consparse.report.results import write_results


            @hydra.main(version_base="1.3", config_path="conf", config_name="config")
            def main(cfg):
                write_results(
                    HydraConfig.get().runtime.output_dir,
                    {"method": cfg.method.name, "model": "mlp", "dataset": "digits", "seed": cfg.seed,
                     "setting": {"name": None, "model": None}, "variant": cfg.method.name,
                     "overrides": list(HydraConfig.get().overrides.task),
                     "status": "failed", "error": "stopped on purpose"},
                )


            main()
            """
        )
    )
    done = run_python("app.py", "-m", "seed=0,1", cwd=tmp_path)
    # Both jobs failed: the report is written, then the sweep exits 1.
    assert done.returncode == 1, done.stderr
    assert "consparse: error: 2 of 2 jobs did not complete (2 failed)" in done.stderr
    (sweep_dir,) = sweeps.iterdir()
    with open(sweep_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["run_dir"], r["seed"], r["status"]) for r in rows] == [("0", "0", "failed"), ("1", "1", "failed")]
    assert all(r["overrides"] == f"seed={r['seed']}" for r in rows)
    assert "## Failed or missing runs (2)" in (sweep_dir / "results.md").read_text()
