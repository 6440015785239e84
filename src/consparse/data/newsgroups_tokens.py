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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.download import DEFAULT_DOWNLOAD_TIMEOUT
from consparse.data.info import DatasetInfo
from consparse.data.newsgroups import NewsgroupsDataModule
from consparse.data.newsgroups_posts import NUM_CLASSES, SPLITS, Documents
from consparse.errors import ParameterError
from consparse.validation import check_int


def load_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer by Hub id or local directory; ParameterError when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ParameterError(
            "tokenizer",
            f"cannot load the tokenizer '{name}' from the Hugging Face Hub, its cache or a local directory ({first}); "
            "run once with network access to fill the cache, or give a directory written by save_pretrained",
        ) from None
    if tokenizer.pad_token is None:
        raise ParameterError("tokenizer", f"the tokenizer '{name}' has no padding token")
    return tokenizer


class NewsgroupsTokensDataModule(ConsparseDataModule):
    """20 Newsgroups as ``(2, max_length)`` token ids and attention masks.

    The posts are read by a ``NewsgroupsDataModule`` with the same ``source``, ``remove``,
    ``hf_dataset_id`` and ``download_timeout`` (its files, download and error messages).

    Args:
        tokenizer: Hub id or local directory of the tokenizer (the model's own).
        max_length: tokens per post after truncation and padding (at most the model's positions).
        source, remove, hf_dataset_id, download_timeout: as for ``NewsgroupsDataModule``.
        **kwargs: the ``ConsparseDataModule`` options (root, batch_size, val_fraction, ...).
    """

    def __init__(
        self,
        tokenizer: str = "distilbert-base-uncased",
        max_length: int = 256,
        source: str = "auto",
        remove: Sequence[str] = ("headers", "footers", "quotes"),
        hf_dataset_id: str = "SetFit/20_newsgroups",
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(tokenizer, str) or not tokenizer:
            raise ParameterError("tokenizer", f"got {tokenizer!r}; expected a Hub id or a directory")
        check_int("max_length", max_length, 2, 100_000)
        self.posts = NewsgroupsDataModule(
            root=str(self.root), download=self.download, source=source, remove=remove,
            hf_dataset_id=hf_dataset_id, download_timeout=download_timeout, cache_dir=None,
        )
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self._tokenizer: Any = None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("newsgroups20_tokens", (2, self.max_length), NUM_CLASSES, "text")

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def required_files(self) -> list[Path]:
        return self.posts.required_files()

    def how_to_get(self) -> str:
        return self.posts.how_to_get()

    def download_files(self) -> None:
        self.posts.download_files()

    def ensure_available(self) -> None:
        self.posts.check_available()
        self.tokenizer  # noqa: B018 - loads it (or says why not) before any compute

    def encode(self, documents: Documents) -> TensorDataset:
        """One split as ``(N, 2, max_length)`` ids and masks, with its labels."""
        encoded = self.tokenizer(
            documents.texts, truncation=True, padding="max_length", max_length=self.max_length, return_tensors="pt"
        )
        tokens = torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1).to(torch.int64)
        return TensorDataset(tokens, torch.from_numpy(documents.labels).to(torch.int64))

    def build_splits(self) -> Splits:
        documents = self.posts.read_documents()
        splits = {split: self.encode(documents[split]) for split in SPLITS}
        return Splits(train=splits["train"], train_eval=splits["train"], test=splits["test"])
