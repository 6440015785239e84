"""Two DDP processes (gloo, launched by ``torchrun``) train what one process trains at the same global batch.

For every method the 2-process run must export the same weights (to float tolerance) and write the
same results.json figures as the 1-process run, with every rank ending the fit in the same state
(``hardware.ranks_agree``). The jobs of each world size run in one launch (a script that runs them
one after the other), so the processes start once, not once per method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

COMMON = [
    "dataset=digits",
    # 640 samples, 10 global batches of 64 an epoch; two epochs check that each epoch reshuffles alike.
    "dataset.max_train_samples=640",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "evaluation.compression_grid={unstructured: [0.0, 0.9]}",
    "evaluation.latency.min_run_time=0.01",
    "evaluation.latency.rounds=1",
]
MLP = ["model=mlp", "model.hidden=[32,16]"]
JOBS = {
    "dense": ["method=dense", *MLP],
    "magnitude": ["method=magnitude", "method.finetune_epochs=1", "method.target_density=0.3", *MLP],
    "sfw": ["method=sfw", *MLP],
    "l0": ["method=l0", "method.target_density=0.5", "method.dual_lr=0.05", *MLP],
    "implicit_fw": ["method=implicit_fw", "model=implicit", "model.state_size=32"],
    # With a fine-tuning whose regrowth moves entries every other step: the ranks' averaged gradient
    # must choose what one process's does.
    "implicit_lasso": ["method=implicit_lasso", "model=mlp", "model.hidden=[24,12]", "method.solver.row_batch=8",
                       "method.data_fraction=0.5", "method.kappa=0.1", "method.finetune_epochs=1",
                       "method.finetune_regrow=0.3", "method.finetune_regrow_every=2"],
}
# The read-out of implicit_lasso is a least-squares refit on float64 statistics of the teacher's
# states: the teacher's last-bit differences come back amplified by its conditioning.
WEIGHT_TOLERANCE = {"implicit_lasso": {"rtol": 1e-3, "atol": 1e-3}}

SCRIPT = textwrap.dedent(
    """
    import json, sys, traceback
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from conftest import compose_config
    import consparse.train

    out, hardware, jobs = Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    for name, overrides in jobs.items():
        consparse.train.run(compose_config([*overrides, f"hardware={hardware}"], out / name))
    """
)


def _launch(tmp_path: Path, hardware: str, processes: int) -> Path:
    script = tmp_path / "jobs.py"
    script.write_text(SCRIPT)
    out = tmp_path / hardware
    jobs = {name: [*COMMON, *overrides] for name, overrides in JOBS.items()}
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), str(script), str(REPO / "tests"), str(out),
               hardware, json.dumps(jobs)]
    completed = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=1200,
                               cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-4000:]
    (out / "stderr.txt").write_text(completed.stderr)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    return {"single": _launch(root, "cpu", 1), "ddp": _launch(root, "cpu_ddp", 2)}


def _read(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The results and the exported weights; an implicit model's as its (A, B, C, D), which do not
    depend on the kernel format (dense or CSR) that timing chose for its deployed form."""
    export = run / "export"
    matrices = export / "implicit_matrices.safetensors"
    weights = load_file(str(matrices if matrices.is_file() else export / "model.safetensors"))
    return json.loads((run / "results.json").read_text()), weights


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("method", list(JOBS))
def test_two_processes_train_what_one_process_trains(runs: dict[str, Path], method: str) -> None:
    single, single_weights = _read(runs["single"] / method)
    ddp, ddp_weights = _read(runs["ddp"] / method)
    assert single["status"] == ddp["status"] == "completed"
    assert single["hardware"]["world_size"] == 1 and single["hardware"]["ranks_agree"] is None
    assert ddp["hardware"]["world_size"] == 2 and ddp["hardware"]["ranks_agree"] is True

    assert single_weights.keys() == ddp_weights.keys()
    tolerance = WEIGHT_TOLERANCE.get(method, {"rtol": 1e-4, "atol": 1e-5})
    for name, tensor in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, **tolerance, msg=lambda m, n=name: f"{n}: {m}")

    assert ddp["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=1e-9)
    for key in ("density", "params", "macs", "dense_params", "per_layer_density", "epochs"):
        assert ddp[key] == pytest.approx(single[key]), key
    assert [point["test_accuracy"] for point in ddp["compression_curve"]] == pytest.approx(
        [point["test_accuracy"] for point in single["compression_curve"]]
    )
    _same_method_metrics(method, single["method_metrics"], ddp["method_metrics"])


@pytest.mark.ddp
@pytest.mark.slow
def test_metrics_are_reduced_over_ranks_without_lightning_warning(runs: dict[str, Path]) -> None:
    """Lightning warns "use sync_dist=True" for every epoch metric logged unreduced under DDP."""
    assert "sync_dist" not in (runs["ddp"] / "stderr.txt").read_text()


def _same_method_metrics(method: str, single: dict, ddp: dict) -> None:
    """The method's own figures: those fixed by the trained state must match; bookkeeping of the split may not."""
    if method == "l0":
        assert ddp["multipliers"] == pytest.approx(single["multipliers"], rel=1e-5, abs=1e-7)
        assert any(value > 0 for value in single["multipliers"]), "the constraint should have been active"
        assert ddp["expected_density"]["model"] == pytest.approx(single["expected_density"]["model"], rel=1e-5)
        assert ddp["test_gate_density"] == pytest.approx(single["test_gate_density"])
    elif method == "sfw":
        assert ddp["fw_gap"] == pytest.approx(single["fw_gap"], rel=1e-4)
        assert all(group["feasible"] for group in ddp["constraints"].values())
    elif method == "implicit_fw":
        assert ddp["atoms"] == single["atoms"] and ddp["frozen_steps"] == single["frozen_steps"]
        assert ddp["per_matrix_nonzeros"] == single["per_matrix_nonzeros"]
        # Each rank solved half of every batch's fixed points; the run reports all of them.
        for kind in ("training_forward", "training_backward"):
            ours, theirs = ddp["fixed_point"][kind], single["fixed_point"][kind]
            assert ours["samples"] == theirs["samples"] and ours["forwards"] == theirs["forwards"], kind
        assert [point["val_accuracy"] for point in ddp["density_curve"]] == pytest.approx(
            [point["val_accuracy"] for point in single["density_curve"]]
        )
    elif method == "implicit_lasso":
        assert single["row_ranks"] == 1 and ddp["row_ranks"] == 2
        for key in ("rows", "rows_active", "row_nonzeros", "kappa"):
            assert ddp[key] == single[key], key
        assert ddp["teacher_accuracy"] == pytest.approx(single["teacher_accuracy"])
        assert ddp["finetune"]["regrow_updates"] == single["finetune"]["regrow_updates"] > 0
        assert ddp["finetune"]["moved"] == single["finetune"]["moved"]
