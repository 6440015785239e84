"""model=distilbert: a transformer encoder with a Linear/ReLU head, its token inputs and its clear failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.text_fixtures import LENGTH, VOCAB, tiny_distilbert_overrides, write_tokenizer

from consparse.config import instantiate_node
from consparse.data.newsgroups_tokens import NewsgroupsTokensDataModule
from consparse.errors import ConfigError, ParameterError
from consparse.implicit.convert import linear_relu_chain
from consparse.models import build_model
from consparse.models.transformer import TransformerClassifier
from consparse.report.results import read_results

REPO = Path(__file__).resolve().parents[2]
TINY = {"model_type": "distilbert", "vocab_size": VOCAB, "dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32,
        "max_position_embeddings": LENGTH}


def _tiny(num_classes: int = 5) -> TransformerClassifier:
    torch.manual_seed(0)
    return TransformerClassifier([2, LENGTH], num_classes, pretrained=False, config=TINY).eval()


def test_token_batches_give_logits_and_the_head_is_a_linear_relu_chain() -> None:
    model = _tiny()
    ids = torch.randint(0, VOCAB, (3, LENGTH))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    logits = model(torch.stack([ids, mask], dim=1))
    assert logits.shape == (3, 5)
    # Padding is masked: changing the padded tokens of sample 0 leaves its logits unchanged.
    changed = ids.clone()
    changed[0, 8:] = (ids[0, 8:] + 1) % VOCAB
    assert torch.allclose(model(torch.stack([changed, mask], dim=1))[0], logits[0], atol=1e-5)
    assert len(linear_relu_chain(model.head)) == 2


def test_shape_only_probes_run() -> None:
    # The platform's MAC and latency probes send random floats of the input shape.
    assert _tiny()(torch.randn(2, 2, LENGTH)).shape == (2, 5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_shape": [784]}, ""),
        ({"pretrained": False, "config": None}, "config"),
        ({"pretrained": False, "config": {"model_type": "distilbert", "n_heads": 3, "dim": 16}}, "config"),
        ({"pretrained": True, "config": TINY}, "config"),
        ({"dropout": 1.0, "pretrained": False, "config": TINY}, "dropout"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, field: str) -> None:
    arguments = {"input_shape": [2, LENGTH], "num_classes": 4, **kwargs}
    with pytest.raises(ParameterError) as error:
        TransformerClassifier(**arguments)
    assert error.value.name == field


@pytest.mark.slow
def test_offline_without_a_cache_fails_with_one_line_before_compute(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "train.py"), "method=implicit_lasso", "model=distilbert",
               "dataset=newsgroups20_tokens", "evaluation.export=false", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("consparse: error: model.hub_id: cannot load the pretrained weights of 'distilbert-base-uncased'")
    failure = read_results(tmp_path / "run")
    assert failure["status"] == "failed" and "model.hub_id" in failure["error"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_transformer_is_refused_by_the_export_with_the_fix(tmp_path: Path) -> None:
    from tests.conftest import compose_config

    from consparse.run_config import check_exportable

    cfg = compose_config(["model=distilbert"], tmp_path)
    with pytest.raises(ConfigError, match="not a registered architecture.*evaluation.export=false"):
        check_exportable(cfg.model)


def test_the_token_dataset_encodes_posts_with_a_local_tokenizer(make_config, tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    cfg = make_config(*tiny_distilbert_overrides(tmp_path / "data", tokenizer))
    datamodule = instantiate_node(cfg.dataset)
    assert isinstance(datamodule, NewsgroupsTokensDataModule) and datamodule.info.input_shape == (2, LENGTH)
    datamodule.setup()
    tokens, label = datamodule.test_set[0]
    assert tokens.shape == (2, LENGTH) and tokens.dtype == torch.int64 and 0 <= int(label) < 20
    assert int(tokens[0].max()) < VOCAB and set(tokens[1].tolist()) <= {0, 1}
    # The header names the group: stripped (remove=[headers, ...]) as in the TF-IDF dataset.
    vocabulary = datamodule.tokenizer.get_vocab()
    assert "header0" not in vocabulary or vocabulary["header0"] not in tokens[0].tolist()
    model = build_model(cfg.model, datamodule.info)
    assert model(tokens[None]).shape == (1, 20)


def test_a_missing_local_tokenizer_is_a_config_error(make_config, tmp_path: Path) -> None:
    cfg = make_config(*tiny_distilbert_overrides(tmp_path / "data", tmp_path / "no-such-tokenizer"))
    with pytest.raises(ConfigError, match=r"dataset\.tokenizer"):
        instantiate_node(cfg.dataset, "dataset").check_available()
