"""The deployed implicit model: one pass where A is nilpotent, a fixed point over cyclic levels only,
dense or CSR kernels, counting, and the export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from consparse.compress.count import model_stats
from consparse.compress.export import export_model, load_exported
from consparse.models.implicit import ImplicitModel
from consparse.models.implicit_deployed import DeployedImplicitModel
from consparse.models.mlp import MLP
from consparse.models.sparse_linear import FORMATS, SparseLinear, choose_format

TIGHT = {"rtol": 1e-13, "atol": 1e-15, "max_iter": 5000}


def _mlp() -> MLP:
    torch.manual_seed(0)
    return MLP([3, 4], 5, hidden=[9, 6]).double().eval()


def _sparse(matrix: torch.Tensor, keep: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return matrix * (torch.rand(matrix.shape, generator=generator, dtype=matrix.dtype) < keep)


def _cyclic_model(n: int = 14, seed: int = 0) -> ImplicitModel:
    """A well-posed sparse implicit model whose A has cycles (||A||_inf = 0.8), and some pure-DAG states."""
    generator = torch.Generator().manual_seed(seed)
    A = _sparse(torch.rand(n, n, generator=generator, dtype=torch.float64), 0.25, seed)
    A[: n // 3] = 0  # a few states driven by the input only
    A = A / A.abs().sum(dim=1, keepdim=True).clamp_min(1e-12) * 0.8
    B = _sparse(torch.randn(n, 13, generator=generator, dtype=torch.float64), 0.5, seed + 1)
    C = torch.randn(5, n, generator=generator, dtype=torch.float64)
    D = _sparse(torch.randn(5, 13, generator=generator, dtype=torch.float64), 0.3, seed + 2)
    return ImplicitModel.from_matrices(A, B, C, D, [3, 4], **TIGHT)


def _inputs(batch: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


@pytest.mark.parametrize("formats", ["dense", "csr", "threshold"])
def test_a_converted_network_is_deployed_as_one_pass_equal_to_the_network(formats: str) -> None:
    net = _mlp()
    implicit = ImplicitModel.from_sequential(net, kappa=0.9, input_shape=[3, 4])
    deployed = DeployedImplicitModel.from_implicit(implicit, formats)
    x = _inputs()
    torch.testing.assert_close(deployed(x), net(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(deployed(x), implicit(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(deployed(x[:1]), net(x[:1]), rtol=1e-12, atol=1e-12)  # one sample: vector products
    summary = deployed.fixed_point_summary()
    assert summary["evaluation"] == "one_pass" and summary["levels"] == 2 and summary["max_iterations"] == 0
    assert not deployed.recurrences and deployed.structure["acyclic"]
    if formats in FORMATS:
        assert set(deployed.formats().values()) == {formats}


def test_a_permuted_random_dag_is_one_pass_and_equals_the_fixed_point() -> None:
    n = 20
    generator = torch.Generator().manual_seed(3)
    lower = _sparse(torch.tril(torch.rand(n, n, generator=generator, dtype=torch.float64), -1), 0.3, 4)
    lower = lower / lower.abs().sum(dim=1, keepdim=True).clamp_min(1e-12) * 0.9
    permutation = torch.randperm(n, generator=generator)
    A = lower[permutation][:, permutation]
    B = torch.randn(n, 13, generator=generator, dtype=torch.float64)
    C = torch.randn(5, n, generator=generator, dtype=torch.float64)
    D = torch.randn(5, 13, generator=generator, dtype=torch.float64)
    implicit = ImplicitModel.from_matrices(A, B, C, D, [3, 4], **TIGHT)
    deployed = DeployedImplicitModel.from_implicit(implicit, "csr")
    x = _inputs()
    torch.testing.assert_close(deployed(x), implicit(x), rtol=1e-10, atol=1e-10)
    assert deployed.fixed_point_summary()["evaluation"] == "one_pass"
    assert deployed.structure["levels"] >= 3


@pytest.mark.parametrize("formats", ["dense", "csr"])
def test_a_cyclic_model_keeps_a_fixed_point_over_its_cyclic_states_only(formats: str) -> None:
    implicit = _cyclic_model()
    deployed = DeployedImplicitModel.from_implicit(implicit, formats)
    x = _inputs()
    torch.testing.assert_close(deployed(x), implicit(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(deployed(x[:1]), implicit(x[:1]), rtol=1e-9, atol=1e-9)
    summary = deployed.fixed_point_summary()
    assert summary["evaluation"] == "fixed_point" and summary["converged"]
    assert 1 < summary["max_iterations"] <= TIGHT["max_iter"]
    structure = deployed.structure
    assert not structure["acyclic"] and 0 < structure["cyclic_states"] < structure["kept_states"]
    # Iterations enter the MACs: a recurrence costs its nonzeros once per iteration.
    assert deployed.macs_per_sample() > deployed.macs_per_sample() - sum(
        int(torch.count_nonzero(k.stored_weights())) for k in deployed.recurrences.values())


def test_anderson_and_a_warm_start_reach_the_same_outputs() -> None:
    implicit = _cyclic_model(seed=2)
    x = _inputs()
    expected = implicit(x)
    plain = DeployedImplicitModel.from_implicit(implicit, "dense")
    kwargs = plain.constructor_kwargs()
    for changes in ({"anderson_memory": 4}, {"warm_start": True}, {"warm_start": True, "anderson_memory": 3}):
        variant = DeployedImplicitModel(**{**kwargs, **changes}).double()
        variant.load_state_dict(plain.state_dict(), strict=False)
        if variant.warm_start:
            with torch.no_grad():
                variant.warm_states.uniform_(0.0, 1.0)  # any start: the fixed point is unique
        torch.testing.assert_close(variant(x), expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(variant(x[:1]), expected[:1], rtol=1e-9, atol=1e-9)
        assert variant.fixed_point_summary()["converged"]


def test_as_matrices_gives_an_equivalent_implicit_model() -> None:
    implicit = _cyclic_model(seed=4)
    deployed = DeployedImplicitModel.from_implicit(implicit, "csr")
    A, B, C, D = deployed.as_matrices()
    rebuilt = ImplicitModel.from_matrices(A, B, C, D, [3, 4], **TIGHT)
    x = _inputs()
    torch.testing.assert_close(rebuilt(x), implicit(x), rtol=1e-9, atol=1e-9)


def test_dropped_states_change_no_output_and_counting_matches_the_implicit_model() -> None:
    implicit = _cyclic_model(seed=6)
    with torch.no_grad():
        implicit.C[:, 0] = 0  # state 0 (driven by the input only, fed to no one if A's column is 0)
        implicit.A[:, 0] = 0
        implicit.B[1] = 0  # state 1: no input and no bias
        implicit.A[1] = 0
    deployed = DeployedImplicitModel.from_implicit(implicit, "dense")
    assert deployed.structure["zero_states"] >= 1 and deployed.structure["unobserved_states"] >= 1
    x = _inputs()
    torch.testing.assert_close(deployed(x), implicit(x), rtol=1e-9, atol=1e-9)
    reference = ImplicitModel.from_matrices(*(torch.ones_like(m) for m in (implicit.A, implicit.B, implicit.C, implicit.D)), [3, 4])
    mine, theirs = model_stats(deployed, [3, 4], reference), model_stats(implicit, [3, 4], reference)
    # The deployed model keeps the nonzeros of A, B, C, D except those of the dropped states.
    assert mine.density <= theirs.density and mine.dense_params == theirs.dense_params
    assert mine.params <= theirs.params


def test_the_export_rebuilds_the_deployed_model_from_data(tmp_path: Path) -> None:
    implicit = _cyclic_model(seed=8)
    net = _mlp()
    for name, model in (("cyclic", implicit), ("converted", ImplicitModel.from_sequential(net, 0.9, input_shape=[3, 4]))):
        for formats in ("dense", "csr"):
            deployed = DeployedImplicitModel.from_implicit(model, formats)
            run_dir = tmp_path / f"{name}_{formats}"
            relative = export_model(deployed, run_dir, {"method": "implicit_fw"}, {"_target_": "unused"})
            description = json.loads((run_dir / relative).read_text())
            assert description["architecture"] == "implicit_deployed" and description["structure"] == []
            assert "_target_" not in json.dumps({k: v for k, v in description.items() if k != "config"})
            loaded = load_exported(run_dir)
            assert isinstance(loaded, DeployedImplicitModel) and loaded.formats() == deployed.formats()
            x = _inputs()
            torch.testing.assert_close(loaded(x), deployed(x), rtol=0, atol=0)
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- kernels
def test_sparse_linear_formats_compute_the_same_product() -> None:
    weight = _sparse(torch.randn(7, 12, dtype=torch.float64), 0.3, 1)
    weight[:, :2] = 0  # trimmed away
    bias = torch.randn(7, dtype=torch.float64)
    buffer = torch.randn(15, 4, dtype=torch.float64)
    expected = weight @ buffer[3:15] + bias[:, None]
    for fmt in FORMATS:
        kernel = SparseLinear.from_weight(weight, bias, fmt, start=3)
        assert kernel.start == 5 and kernel.columns == 10
        torch.testing.assert_close(kernel(buffer), expected)
        out = buffer.new_empty(7, 4)
        kernel(buffer, out)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(kernel.dense_weight(), weight[:, 2:])
        torch.testing.assert_close(kernel(buffer[:, 0]), expected[:, 0])


def test_the_format_choice_follows_density_and_measured_speed() -> None:
    dense = torch.randn(256, 256)
    very_sparse = torch.zeros(1000, 1000)
    very_sparse[torch.arange(10) * 100, torch.arange(10) * 100 + 7] = 1.0  # spread: no column trimming helps
    assert choose_format(dense, "threshold") == "dense"
    assert choose_format(very_sparse, "threshold") == "csr"
    assert choose_format(torch.zeros(8, 8), "measure") == "dense"  # nothing to multiply
    assert choose_format(dense, "csr") == "csr"
    # Measured on this machine: orders of magnitude apart, so the choice is not noise.
    assert choose_format(very_sparse, "measure") == "csr"
    assert choose_format(dense, "measure") == "dense"
    with pytest.raises(ValueError, match="format choice"):
        choose_format(dense, "fastest")


def test_a_fixed_point_cut_short_reports_that_it_did_not_converge() -> None:
    implicit = _cyclic_model(seed=3)
    deployed = DeployedImplicitModel.from_implicit(implicit, "dense")
    cut = DeployedImplicitModel(**{**deployed.constructor_kwargs(), "max_iter": 2}).double()
    cut.load_state_dict(deployed.state_dict())
    x = _inputs()
    cut(x)
    cut(x[:1])
    summary = cut.fixed_point_summary()
    assert not summary["converged"] and summary["max_iterations"] <= 2 * len(cut.recurrences)
    assert summary["forwards"] == 2 and summary["samples"] == 17
