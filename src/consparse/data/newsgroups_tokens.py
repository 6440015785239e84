"""20 Newsgroups as token ids for a transformer (``dataset=newsgroups20_tokens``).

The same posts as ``dataset=newsgroups20`` (same sources, same stripping, same splits), tokenised
by a Hugging Face tokenizer: the Hub tokenizer of the model (``tokenizer: distilbert-base-uncased``,
from the Hub cache when offline) or a local tokenizer directory (``tokenizer: /path/to/dir``, as
``save_pretrained`` writes it). Each post becomes ``max_length`` token ids, truncated or padded,
and its attention mask, stacked into one ``(2, max_length)`` int64 tensor per sample
(``consparse.models.transformer`` reads it). Tokenising the 18,846 posts with a fast tokenizer
takes seconds, so nothing is cached.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import TensorDataset

from consparse.data.base import Splits
from consparse.data.info import DatasetInfo
from consparse.data.newsgroups import NUM_CLASSES, SPLITS, Documents, NewsgroupsDataModule
from consparse.errors import ConfigError
from consparse.validation import check_int


def load_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer by Hub id or local directory; ConfigError when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            "dataset.tokenizer",
            f"cannot load the tokenizer '{name}' from the Hugging Face Hub, its cache or a local directory ({first}); "
            "run once with network access to fill the cache, or give a directory written by save_pretrained",
        ) from None
    if tokenizer.pad_token is None:
        raise ConfigError("dataset.tokenizer", f"the tokenizer '{name}' has no padding token")
    return tokenizer


class NewsgroupsTokensDataModule(NewsgroupsDataModule):
    """20 Newsgroups as ``(2, max_length)`` token ids and attention masks.

    Args:
        tokenizer: Hub id or local directory of the tokenizer (the model's own).
        max_length: tokens per post after truncation and padding (at most the model's positions).
        **kwargs: the ``NewsgroupsDataModule`` options (TF-IDF options are ignored).
    """

    def __init__(self, tokenizer: str = "distilbert-base-uncased", max_length: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(tokenizer, str) or not tokenizer:
            raise ConfigError("dataset.tokenizer", f"got {tokenizer!r}; expected a Hub id or a directory")
        check_int("dataset.max_length", max_length, 2, 100_000)
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self._tokenizer: Any = None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("newsgroups20", (2, self.max_length), NUM_CLASSES, "text")

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def check_available(self) -> None:
        super().check_available()
        self.tokenizer  # noqa: B018 - loads it (or says why not) before any compute

    def encode(self, documents: Documents) -> TensorDataset:
        """One split as ``(N, 2, max_length)`` ids and masks, with its labels."""
        encoded = self.tokenizer(
            documents.texts, truncation=True, padding="max_length", max_length=self.max_length, return_tensors="pt"
        )
        tokens = torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1).to(torch.int64)
        return TensorDataset(tokens, torch.from_numpy(documents.labels).to(torch.int64))

    def build_splits(self) -> Splits:
        documents = self.read_documents()
        splits = {split: self.encode(documents[split]) for split in SPLITS}
        return Splits(train=splits["train"], train_eval=splits["train"], test=splits["test"])
