"""A tuned sweep's report (consparse.report.tuned): the choice on validation, recomputed from the files,
and tables made of the runs at the chosen value only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from consparse.report import write_report
from consparse.report.callback import unsuccessful_jobs
from consparse.report.collect import collect_results
from consparse.report.results import write_results
from consparse.tuning import FINAL, SEARCH, grid, job_tuning, select

from .conftest import COMPARE_SETTING, markdown_table, section

FACTORS = (0.3333333, 1.0, 3.0)
GRIDS = {"sfw": grid(1.0, FACTORS), "dense": grid(0.05, FACTORS)}
# (variant, factor, target) -> (val accuracy, test accuracy) of the seed-0 search runs. For sfw the
# best test accuracy is at x0.33 and the best validation accuracy at x3; dense x3 diverged.
SEARCH_RUNS = {
    ("sfw", 0.3333333, 0.1): (0.90, 0.99), ("sfw", 0.3333333, 0.05): (0.86, 0.98),
    ("sfw", 1.0, 0.1): (0.91, 0.95), ("sfw", 1.0, 0.05): (0.87, 0.94),
    ("sfw", 3.0, 0.1): (0.93, 0.90), ("sfw", 3.0, 0.05): (0.88, 0.89),
    ("dense", 0.3333333, None): (0.95, 0.97), ("dense", 1.0, None): (0.96, 0.96), ("dense", 3.0, None): None,
}  # fmt: skip


def write_run(path: Path, variant: str, factor: float, target: float | None, seed: int, phase: str,
              accuracies: tuple[float, float] | None) -> None:  # fmt: skip
    point = next(p for p in GRIDS[variant] if p.factor == factor)
    tuning = job_tuning("method.optimizer.lr", point, GRIDS[variant], phase)
    what_ran = {
        "method": variant, "model": "mlp", "dataset": "mnist", "seed": seed, "setting": COMPARE_SETTING,
        "variant": variant, "target_density": target, "tuning": tuning,
        "overrides": [f"method={variant}", f"seed={seed}", f"method.optimizer.lr={point.value}", f"variant={variant}",
                      *([f"method.target_density={target}"] if target else [])],
    }  # fmt: skip
    (path / ".hydra").mkdir(parents=True)
    if accuracies is None:
        write_results(path, {**what_ran, "status": "diverged", "error": "TrainingDiverged: loss is nan"})
        return
    val, test = accuracies
    write_results(path, {
        **what_ran, "status": "completed", "test_accuracy": test, "val_accuracy": val, "density": target or 1.0,
        "per_layer_density": {}, "params": 100, "dense_params": 1000, "macs": 90, "dense_macs": 900,
        "latency_ms": 0.1, "dense_latency_ms": 0.2, "latency": {}, "compression_curve": [], "method_metrics": {},
        "train_seconds": 1.0, "epochs": 1, "export": None,
    })  # fmt: skip


def tuned_sweep(root: Path) -> Path:
    job = 0
    for (variant, factor, target), accuracies in SEARCH_RUNS.items():
        write_run(root / str(job), variant, factor, target, 0, SEARCH, accuracies)
        job += 1
    # The final phase, as the sweeper launched it: seed 1 at each variant's choice.
    for variant, factor, target in (("sfw", 3.0, 0.1), ("sfw", 3.0, 0.05), ("dense", 1.0, None)):
        write_run(root / str(job), variant, factor, target, 1, FINAL, (0.8, 0.8))
        job += 1
    return root


def test_the_report_chooses_on_validation_and_tabulates_only_the_chosen_runs(tmp_path: Path) -> None:
    sweep = tuned_sweep(tmp_path / "sweep")
    paths = write_report(sweep)
    choices = pd.read_csv(paths["tuning_csv"])
    chosen = choices[choices["chosen"]].set_index("variant")["value"].to_dict()
    # sfw: x3 has the best mean validation accuracy though x0.33 has the best test accuracy;
    # dense: x3 diverged, so it loses although nothing else is known against it.
    assert chosen == {"sfw": 3.0, "dense": 0.05}
    assert choices.set_index(["variant", "factor"]).loc[("sfw", 1.0), "val_accuracy_mean"] == 0.89
    # The same function on the same files: the report and the sweeper cannot disagree.
    assert {s.variant: s.chosen.value for s in select(collect_results(sweep)).values()} == chosen

    table = pd.read_csv(paths["results_csv"])
    assert sorted(zip(table["variant"].fillna(""), table["seed"])) == [("", 0), ("", 0), ("", 0), ("", 1), ("", 1), ("", 1)]
    assert set(table["method"]) == {"sfw", "dense"} and set(table["status"]) == {"completed"}
    summary = pd.read_csv(paths["summary_csv"])
    sfw = summary[summary["method"] == "sfw"].set_index("target_density")
    assert sfw.loc[0.1, "n_seeds"] == 2 and sfw.loc[0.1, "val_accuracy_mean"] == (0.93 + 0.8) / 2

    markdown = paths["markdown"].read_text()
    assert "6 runs: 6 completed, 0 failed or missing" in markdown
    assert "6 tuning runs at values not chosen are left out" in markdown
    lines = section(markdown, "### Tuning on validation")
    assert "the selection used validation accuracy only" in lines[0] and "never test accuracy" in lines[0]
    rows = {row["variant"]: row for row in markdown_table(markdown, "### Tuning on validation")}
    assert rows["sfw"]["× 3"] == "3: 90.50 % ✔" and rows["sfw"]["× 0.333333"] == "0.333333: 88.00 %"
    assert rows["dense"]["× 3"] == "0.15: no val acc, 1 of 1 failed" and rows["dense"]["chosen"] == "0.05"
    listed = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert len(listed) == 6 and any("diverged: TrainingDiverged" in line for line in listed)
    # The diverged search run lost the choice; it is no failure of the sweep.
    assert unsuccessful_jobs(sweep) == ""
    assert "## Failed or missing runs (0)" in markdown


def test_an_untuned_sweep_has_no_tuning_section(sweep: Path) -> None:
    paths = write_report(sweep)
    assert "tuning_csv" not in paths and "Tuning on validation" not in paths["markdown"].read_text()
