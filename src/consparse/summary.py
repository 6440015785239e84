"""The short results table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consparse.report.format import format_count
from consparse.report.summary import far_under_target
from consparse.timing import EVALUATION_PHASES, evaluation_seconds
from consparse.tuning import TARGET_TOLERANCE, missed_target


def format_summary(results: dict[str, Any], run_dir: Path) -> str:
    """A few lines a researcher reads at the end of a run: accuracy, density, size, speed."""
    rows = [
        ("method / model / data", f"{results['method']} / {results['model']} / {results['dataset']} (seed {results['seed']})"),
        ("test accuracy", f"{100 * results['test_accuracy']:.2f} %" + _validation(results.get("val_accuracy"))),
        ("density", f"{results['density']:.4f}" + _versus_target(results)),
        ("params", f"{format_count(results['params'])} of {format_count(results['dense_params'])} dense"),
        ("MACs / sample", f"{format_count(results['macs'])} of {format_count(results['dense_macs'])} dense"),
        ("latency", f"{results['latency_ms']:.3f} ms vs {results['dense_latency_ms']:.3f} ms dense "
                    f"(batch {results['latency'].get('batch_size')}, {results['latency'].get('threads')} thread(s))"),
        ("training", f"{results['epochs']} epochs, {results['train_seconds']:.1f} s"),
        *_time_rows(results.get("phase_seconds") or {}),
        ("results", str(run_dir / "results.json")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(["", "consparse results"] + [f"  {name.ljust(width)}  {value}" for name, value in rows])


def _versus_target(results: dict[str, Any]) -> str:
    """The target beside the density, and a word where the report would mark the run (⚠ or ▽)."""
    target = results.get("target_density")
    if target is None:
        return ""
    if missed_target(results):
        return f" (target {target}): above it by more than {100 * TARGET_TOLERANCE:g} %"
    if far_under_target(results):
        return f" (target {target}): far under it, most of the budget unused"
    return f" (target {target})"


def _validation(accuracy: float | None) -> str:
    return "" if accuracy is None else f" (validation split {100 * accuracy:.2f} %)"


def _time_rows(phase_seconds: dict[str, float]) -> list[tuple[str, str]]:
    """Where the run's time went: the phases, the evaluation after training in detail."""
    if not phase_seconds:
        return []
    evaluation = evaluation_seconds(phase_seconds)
    run = [f"{name} {seconds:.1f}" for name, seconds in phase_seconds.items() if name not in EVALUATION_PHASES]
    details = [f"{name} {seconds:.1f}" for name, seconds in phase_seconds.items() if name in EVALUATION_PHASES]
    total = sum(phase_seconds.values())
    return [
        ("time (s)", f"{total:.1f}: " + ", ".join([*run, f"evaluation {evaluation:.1f}"])),
        ("evaluation (s)", ", ".join(details)),
    ]
