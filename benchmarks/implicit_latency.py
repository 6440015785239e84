"""Latency of deployed implicit models against the dense mlp they replace, measured in one run.

Each ``--run`` is a completed ``train.py`` run of ``method=implicit_lasso`` or ``method=implicit_fw``
(its ``export/`` holds the deployed model; an export from before deployment, an ``ImplicitModel``,
is deployed here). For each run, timed alternately with ``consparse.compress.latency.compare_latency``
(random inputs, as every run's latency) at each batch size, one thread:

* ``mlp``: the dense mlp (``--hidden``; the mlp an implicit_lasso run converted, the mlp an
  implicit_fw run's state size matches); its latency does not depend on its weights;
* ``fixed_point``: the deployed model's matrices as an ``ImplicitModel`` (Picard iteration over
  every state on dense matrices, the model's own solver settings): how implicit models were deployed;
* ``deployed``: the deployed form (levels, sparse or dense kernels, fixed point on cyclic levels only);
* for a model with cyclic levels, ``anderson`` (Anderson acceleration, memory 5) and ``warm``
  (every solve starts from the mean state over ``--warm-samples`` training samples), with the
  deployed model's mean fixed-point iterations per forward at batch 1 on test images.

``--redeploy`` deploys the run's model again with this code (levels, and kernel formats measured now).

Test accuracy of the fixed-point and deployed forms is printed beside them (they must agree).

    OMP_NUM_THREADS=1 python benchmarks/implicit_latency.py --data-root ../shared/data \\
        --run lasso_0.1=<run dir> --run fw_0.02=<run dir>
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from consparse.compress.evaluate import evaluate_accuracy
from consparse.compress.export import load_exported
from consparse.compress.latency import compare_latency
from consparse.config import instantiate_node
from consparse.models.implicit import ImplicitModel
from consparse.models.implicit_deployed import DeployedImplicitModel
from consparse.models.mlp import MLP


def deployed_of(run_dir: Path) -> DeployedImplicitModel:
    model = load_exported(run_dir)
    if isinstance(model, ImplicitModel):
        model = DeployedImplicitModel.from_implicit(model)
    if not isinstance(model, DeployedImplicitModel):
        raise SystemExit(f"{run_dir}: its export is a {type(model).__name__}, not an implicit model")
    return model


def fixed_point_form(deployed: DeployedImplicitModel) -> ImplicitModel:
    settings = deployed.settings
    return ImplicitModel.from_matrices(
        *deployed.as_matrices(), deployed.input_shape, kappa=0.999, max_iter=settings.max_iter,
        rtol=settings.rtol, atol=settings.atol, on_nonconvergence="ignore",
    ).eval()


def variant(deployed: DeployedImplicitModel, **changes: object) -> DeployedImplicitModel:
    model = DeployedImplicitModel(**{**deployed.constructor_kwargs(), **changes}).to(deployed.readout.bias.dtype)
    model.load_state_dict(deployed.state_dict(), strict=False)
    return model.eval()


@torch.inference_mode()
def mean_states(deployed: DeployedImplicitModel, inputs: torch.Tensor) -> torch.Tensor:
    """The mean over ``inputs`` of the deployed model's states (in its evaluation order)."""
    A, B, C, D = deployed.as_matrices()
    implicit = ImplicitModel.from_matrices(A, B, C, D, deployed.input_shape, kappa=0.999, on_nonconvergence="ignore")
    return implicit.states(inputs).mean(dim=0)


def iterations_per_sample(model: DeployedImplicitModel, images: torch.Tensor) -> float:
    counted = copy.deepcopy(model)
    counted.reset_fixed_point_summary()
    with torch.inference_mode():
        for image in images:
            counted(image[None])
    return counted.fixed_point_summary()["mean_iterations"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR of a completed implicit run")
    parser.add_argument("--data-root", required=True, help="the datasets' root (dataset.root of the runs)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[300, 100], help="hidden sizes of the dense mlp")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--min-run-time", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm-samples", type=int, default=2000)
    parser.add_argument("--iteration-samples", type=int, default=300)
    parser.add_argument("--redeploy", action="store_true",
                        help="deploy the run's model again with this code (levels, and formats measured now)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    for entry in args.run:
        name, _, path = entry.partition("=")
        run_dir = Path(path)
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        cfg.dataset.root = args.data_root
        datamodule = instantiate_node(cfg.dataset)
        datamodule.setup()
        info = datamodule.info
        deployed = deployed_of(run_dir)
        fixed_point = fixed_point_form(deployed)
        if args.redeploy:
            deployed = DeployedImplicitModel.from_implicit(fixed_point)
        mlp = MLP(list(info.input_shape), info.num_classes, hidden=args.hidden).eval()
        models: dict[str, nn.Module] = {"mlp": mlp, "fixed_point": fixed_point, "deployed": deployed}
        test_images = torch.cat([x for x, _ in datamodule.test_dataloader()])[: args.iteration_samples]
        if deployed.recurrences:
            train_images = torch.cat([x for x, _ in datamodule.train_eval_dataloader(args.warm_samples)])
            warm = variant(deployed, warm_start=True)
            with torch.no_grad():
                warm.warm_states.copy_(mean_states(deployed, train_images))
            models["anderson"] = variant(deployed, anderson_memory=5)
            models["warm"] = warm
        accuracy = {key: evaluate_accuracy(models[key], datamodule.test_dataloader())
                    for key in models if key != "mlp"}
        summary = deployed.fixed_point_summary()
        print(f"\n== {name}: {run_dir}  ({cfg.method.name}, target density {cfg.method.get('target_density')})")
        print(f"structure {getattr(deployed, 'structure', None) or {'levels': summary['levels'], 'cyclic_levels': summary['cyclic_levels']}}")
        print(f"formats {deployed.formats()}")
        print("test accuracy " + ", ".join(f"{key} {value:.4f}" for key, value in accuracy.items()))
        if deployed.recurrences:
            print("fixed-point iterations per sample (batch 1, test images): " + ", ".join(
                f"{key} {iterations_per_sample(models[key], test_images):.1f}" for key in ("deployed", "anderson", "warm")))
        for batch_size in args.batch_sizes:
            timings = compare_latency(models, info.input_shape, rounds=args.rounds, batch_size=batch_size, threads=1,
                                      min_run_time=args.min_run_time)
            base = timings["mlp"]["ms"]
            print(f"batch {batch_size:>3}: " + "  ".join(
                f"{key} {timing['ms']:.4f} ms ({timing['ms'] / base:.2f}x mlp)" for key, timing in timings.items()))


if __name__ == "__main__":
    main()
