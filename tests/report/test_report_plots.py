"""The report's PNG plots (consparse.report.plots, drawn by consparse.report.write)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from consparse.report import write_report

from .conftest import assert_png


def test_plots_are_png_files(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    paths = write_report(sweep, out)
    assert paths["pareto"] == out / "pareto.png"
    assert paths["compression_curves"] == out / "compression_curves.png"
    for name in ("pareto", "compression_curves"):
        assert_png(paths[name])
    assert not (sweep / "results.md").exists()  # everything went to out
    curves = pd.read_csv(paths["curves_csv"])
    assert set(curves["method"]) == {"magnitude", "sfw"} and set(curves["n_seeds"]) == {2}
