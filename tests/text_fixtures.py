"""A tiny tokenizer and a tiny random DistilBERT for the transformer path, built locally (no download)."""

from __future__ import annotations

from pathlib import Path

from tests.data.test_newsgroups_datamodule import (
    GROUPS,
    TEST_PER_GROUP,
    TRAIN_PER_GROUP,
    post,
    write_fake_tarball,
)

VOCAB = 64
LENGTH = 16


def write_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer trained on the fake posts, saved as ``save_pretrained`` writes one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [post(group, doc, split).decode("latin-1") for split, count in (("train", TRAIN_PER_GROUP), ("test", TEST_PER_GROUP))
             for group in range(len(GROUPS)) for doc in range(count)]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=["[PAD]", "[UNK]", "[CLS]"]))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]")
    wrapped.save_pretrained(folder)
    return folder


def tiny_distilbert_overrides(data_root: Path, tokenizer: Path) -> list[str]:
    """Overrides that run model=distilbert, randomly initialised and tiny, on fake 20 Newsgroups tokens."""
    write_fake_tarball(data_root / "20newsgroups" / "20news-bydate.tar.gz")
    config = f"{{model_type:distilbert,vocab_size:{VOCAB},dim:16,n_layers:1,n_heads:2,hidden_dim:32,max_position_embeddings:{LENGTH}}}"
    return [
        "model=distilbert", "model.pretrained=false", f"model.config={config}",
        "dataset=newsgroups20_tokens", f"dataset.root={data_root}", "dataset.source=tarball", "dataset.download=false",
        f"dataset.tokenizer={tokenizer}", f"dataset.max_length={LENGTH}", "dataset.batch_size=8", "dataset.val_fraction=0.2",
    ]
