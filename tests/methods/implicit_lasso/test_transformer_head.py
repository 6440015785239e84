"""method=implicit_lasso on model=distilbert: fine-tune, convert the head by state matching on the
encoder's features, write results.json (a tiny random DistilBERT and a local tokenizer: no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from tests.text_fixtures import LENGTH, VOCAB, tiny_distilbert_overrides, write_tokenizer

from consparse.lasso.search import SearchSettings
from consparse.methods.implicit_lasso.head import HeadStateMatching
from consparse.methods.implicit_lasso.matching import MatchingSettings
from consparse.methods.implicit_lasso.readout import ReadoutSettings
from consparse.methods.implicit_lasso.refit import RowSolver
from consparse.models.implicit import ImplicitModel
from consparse.models.transformer import TransformerClassifier
from consparse.report.results import read_results
from consparse.train import run


def test_a_tiny_distilbert_is_fine_tuned_and_its_head_state_matched(make_config, tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    overrides = [
        "method=implicit_lasso", *tiny_distilbert_overrides(tmp_path / "data", tokenizer),
        "method.optimizer.lr=1e-3", "method.kappa=0.3", "method.data_fraction=0.5",
        "evaluation.export=false", "evaluation.compression_grid=null", "seed=0",
    ]
    cfg = make_config(*overrides)
    results = run(cfg)
    on_disk = read_results(tmp_path / "run")
    assert on_disk["status"] == "completed" and results["model"] == "distilbert"
    metrics = on_disk["method_metrics"]
    assert metrics["formulation"] == "head"
    # The head's 16 hidden units are the rows; its refit keeps every row in the radius (well-posed).
    assert metrics["rows"] == 16 and metrics["samples"] == 24
    assert metrics["max_norm_over_radius"] <= 1 + 1e-9 and metrics["well_posedness"] <= 0.3 * (1 + 1e-9)
    assert 0.0 <= metrics["row_sparsity"] < 1.0 and metrics["conversion_error"] < 1e-4
    # The deployed head solved its fixed point on every test and latency forward.
    assert metrics["fixed_point"]["converged"] and metrics["fixed_point"]["samples"] > 0
    assert 0.0 <= on_disk["test_accuracy"] <= 1.0 and 0.0 < on_disk["density"] <= 1.0


def test_the_teachers_radius_reproduces_the_transformer_through_its_implicit_head() -> None:
    torch.manual_seed(0)
    config = {"model_type": "distilbert", "vocab_size": VOCAB, "dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32,
              "max_position_embeddings": LENGTH}
    teacher = TransformerClassifier([2, LENGTH], 4, pretrained=False, config=config).eval()
    generator = torch.Generator().manual_seed(1)

    def batch() -> torch.Tensor:
        ids = torch.randint(0, VOCAB, (20, LENGTH), generator=generator)
        return torch.stack([ids, torch.ones_like(ids)], dim=1)

    loader = [(batch(), torch.zeros(20, dtype=torch.long)) for _ in range(4)]
    matcher = HeadStateMatching(teacher, loader, [2, LENGTH], MatchingSettings(readout=ReadoutSettings(mode="none")), torch.device("cpu"))
    assert matcher.samples == 80 and [block.problem.gram.shape[0] for block in matcher.blocks] == [16 + 16 + 1]
    # At the conversion's radius the teacher's own rows are feasible and fit exactly (80 samples, 33 columns),
    # up to the LASSO's floor penalty (lambda_min_ratio).
    solutions = RowSolver(matcher.blocks, 64, SearchSettings(step="path")).solve(matcher.radii(0.95))
    student = matcher.build(solutions, 0.95).float().eval()
    assert isinstance(student.head, ImplicitModel) and student.encoder is not teacher.encoder
    with torch.no_grad():
        inputs = batch()
        expected = teacher(inputs)
        assert (student(inputs) - expected).abs().max() <= 1e-2 * expected.abs().max()
