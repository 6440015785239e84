"""20 Newsgroups (bydate split: 11,314 train / 7,532 test posts, 20 groups) as TF-IDF vectors.

Sources (``source``):

* ``tarball``: ``<root>/20newsgroups/20news-bydate.tar.gz`` read in place with ``tarfile`` (the
  posts are Latin-1 bytes under ``20news-bydate-{train,test}/<group>/<id>``);
* ``sklearn``: the same tarball, downloaded when missing from the mirror scikit-learn's
  ``fetch_20newsgroups`` uses and checked against scikit-learn's SHA-256;
* ``huggingface``: a Hub copy (``SetFit/20_newsgroups`` by default) with ``train``/``test``
  splits of ``text``/``label``, published with headers, footers and quotes already removed;
* ``auto``: ``tarball`` when the tarball is there, otherwise ``sklearn``.

scikit-learn's own cache ``20news-bydate_py3.pkz`` is never read: it is a pickle, and a pickle
placed under ``dataset.root`` by someone else could run any code. Only the tarball's text is read.

``remove`` strips parts of each post with scikit-learn's own helpers, in scikit-learn's order, so
that the texts are those of ``fetch_20newsgroups(remove=...)``. The TF-IDF vectoriser is fitted on
the training split only. Vectorising takes several seconds, so the features are cached in
``cache_dir`` (sparse, safetensors) under a hash of the source file's identity and the options;
an unreadable or mismatching cache file is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse
import sklearn
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.datasets._twenty_newsgroups import (
    ARCHIVE as SKLEARN_ARCHIVE,
)
from sklearn.feature_extraction.text import TfidfVectorizer
from torch.utils.data import TensorDataset

from consparse.data.base import ConsparseDataModule, Splits
from consparse.data.download import DEFAULT_DOWNLOAD_TIMEOUT, download_verified, load_hub_dataset
from consparse.data.info import DatasetInfo
from consparse.data.newsgroups_posts import (
    NUM_CLASSES,
    SPLITS,
    STRIPPERS,
    Documents,
    read_tarball,
    strip_posts,
)
from consparse.errors import ParameterError
from consparse.validation import check_choice, check_int, check_range

if TYPE_CHECKING:  # `datasets` is slow to import and only the Hub sources need it
    from datasets import DatasetDict

log = logging.getLogger(__name__)

TARBALL = Path("20newsgroups") / "20news-bydate.tar.gz"
SKLEARN_CACHE = "20news-bydate_py3.pkz"
SOURCES = ("auto", "tarball", "sklearn", "huggingface")
# Bumped whenever the cached tensors change meaning, so that old caches are not reused.
CACHE_FORMAT = 1


def _file_identity(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class NewsgroupsDataModule(ConsparseDataModule):
    """20 Newsgroups as dense float32 TF-IDF vectors of ``vocab_size`` features.

    Args:
        source: ``auto``, ``tarball``, ``sklearn`` or ``huggingface`` (see the module docstring).
        remove: parts of each post to strip, any of ``headers``, ``footers``, ``quotes``
            (scikit-learn's semantics; the header names the group, so keeping it leaks the label).
        vocab_size: number of TF-IDF features (the most frequent terms of the training split);
            a smaller vocabulary is padded with zero columns so that the input size stays fixed.
        stop_words: ``english`` drops scikit-learn's English stop words; null keeps every term.
        sublinear_tf: use ``1 + log(tf)`` instead of raw term counts.
        cache_dir: folder for the cached feature tensors; null disables the cache.
        hf_dataset_id: the Hub dataset used by ``source=huggingface``.
        download_timeout: seconds a network operation may stall before the download counts as failed.
        **kwargs: the ``ConsparseDataModule`` options (root, batch_size, val_fraction, ...).
    """

    def __init__(
        self,
        source: str = "auto",
        remove: Sequence[str] = ("headers", "footers", "quotes"),
        vocab_size: int = 10000,
        stop_words: str | None = "english",
        sublinear_tf: bool = True,
        cache_dir: str | None = None,
        hf_dataset_id: str = "SetFit/20_newsgroups",
        download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("source", source, SOURCES)
        if not isinstance(remove, (list, tuple)) or not all(part in STRIPPERS for part in remove):
            raise ParameterError("remove", f"got {remove!r}; allowed: a list of {', '.join(STRIPPERS)}")
        check_int("vocab_size", vocab_size, 1, 1_000_000)
        check_choice("stop_words", stop_words, ["english", None])
        check_range("download_timeout", download_timeout, 0.0, low_inclusive=False)
        if not isinstance(hf_dataset_id, str) or not hf_dataset_id:
            raise ParameterError(
                "hf_dataset_id",
                f"got {hf_dataset_id!r}; expected a dataset id such as 'SetFit/20_newsgroups'",
            )
        if source == "huggingface" and set(remove) != set(STRIPPERS):
            raise ParameterError(
                "remove",
                f"got {list(remove)}, but the Hugging Face copy is published with headers, footers and quotes "
                "already removed; use remove=[headers,footers,quotes] or source=tarball/sklearn",
            )
        self.source = source
        self.remove = tuple(part for part in STRIPPERS if part in remove)
        self.vocab_size = vocab_size
        self.stop_words = stop_words
        self.sublinear_tf = bool(sublinear_tf)
        self.cache_dir = Path(os.path.expanduser(str(cache_dir))) if cache_dir is not None else None
        self.hf_dataset_id = hf_dataset_id
        self.download_timeout = download_timeout

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("newsgroups20", (self.vocab_size,), NUM_CLASSES, "text")

    @property
    def tarball_path(self) -> Path:
        return self.root / TARBALL

    @property
    def sklearn_cache_path(self) -> Path:
        return self.root / SKLEARN_CACHE

    @property
    def resolved_source(self) -> str:
        """``auto`` becomes ``tarball`` if the tarball exists, else ``sklearn`` (which downloads it)."""
        if self.source != "auto":
            return self.source
        return "tarball" if self.tarball_path.exists() else "sklearn"

    # ----------------------------------------------------------------- availability
    def required_files(self) -> list[Path]:
        if self.source == "huggingface":
            return []  # the Hub cache has no fixed file list; check_available asks `datasets`
        return [self.tarball_path]

    def how_to_get(self) -> str:
        ignored = (
            f"scikit-learn's cache {self.sklearn_cache_path} is not read (it is a pickle, which can run code); "
            if self.sklearn_cache_path.exists()
            else ""
        )
        return (
            f"To get them, {ignored}either copy 20news-bydate.tar.gz to {self.tarball_path} (dataset.source=auto "
            f"or tarball reads it in place), or run with dataset.source=auto or sklearn and dataset.download=true "
            f"on a machine with network (it is downloaded from scikit-learn's mirror {SKLEARN_ARCHIVE.url})."
        )

    def download_files(self) -> None:
        if self.resolved_source != "sklearn":
            raise OSError(
                "dataset.source=tarball reads a local copy only; dataset.source=sklearn or auto downloads"
            )
        download_verified(
            [SKLEARN_ARCHIVE.url],
            self.tarball_path.parent,
            self.tarball_path.name,
            None,
            self.download_timeout,
            sha256=SKLEARN_ARCHIVE.checksum,
        )

    def ensure_available(self) -> None:
        if self.source == "huggingface":
            self._load_hub()
        else:
            super().ensure_available()

    def _load_hub(self) -> DatasetDict:
        return load_hub_dataset(
            self.info.name,
            self.hf_dataset_id,
            self.root,
            allow_network=self.download,
            timeout=self.download_timeout,
        )

    # ----------------------------------------------------------------- reading texts
    def _read_hub(self, dataset: DatasetDict) -> dict[str, Documents]:
        documents = {}
        for split in SPLITS:
            if split not in dataset:
                raise ParameterError(
                    "hf_dataset_id",
                    f"Hugging Face dataset '{self.hf_dataset_id}' has splits {sorted(dataset)}; expected '{split}'"
                )
            part = dataset[split]
            labels = np.asarray(part["label"], dtype=np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
                raise ParameterError(
                    "hf_dataset_id",
                    f"'{self.hf_dataset_id}' split '{split}' has labels outside [0, {NUM_CLASSES})"
                )
            documents[split] = Documents(list(part["text"]), labels)
        return documents

    # ----------------------------------------------------------------- features and their cache
    def _vectorize(self, documents: dict[str, Documents]) -> dict[str, torch.Tensor]:
        """TF-IDF fitted on the training texts; each split as CSR parts plus labels (the cached form)."""
        vectorizer = TfidfVectorizer(
            max_features=self.vocab_size,
            sublinear_tf=self.sublinear_tf,
            stop_words=self.stop_words,
            dtype=np.float32,
        )
        features = {
            "train": vectorizer.fit_transform(documents["train"].texts),
            "test": vectorizer.transform(documents["test"].texts),
        }
        tensors = {}
        for split in SPLITS:
            matrix = scipy.sparse.csr_matrix(features[split])
            matrix.sort_indices()
            tensors[f"{split}_crow"] = torch.from_numpy(matrix.indptr.astype(np.int64))
            tensors[f"{split}_col"] = torch.from_numpy(matrix.indices.astype(np.int64))
            tensors[f"{split}_values"] = torch.from_numpy(matrix.data.astype(np.float32))
            tensors[f"{split}_labels"] = torch.from_numpy(documents[split].labels.astype(np.int64))
        return tensors

    def _cache_key(self, source_identity: dict[str, object]) -> str:
        payload = {
            "format": CACHE_FORMAT,
            "source": source_identity,
            "remove": list(self.remove),
            "vocab_size": self.vocab_size,
            "stop_words": self.stop_words,
            "sublinear_tf": self.sublinear_tf,
            "sklearn": sklearn.__version__,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def cache_path(self, key: str) -> Path | None:
        """Where the features for cache key ``key`` are stored (None when caching is off)."""
        return self.cache_dir / f"newsgroups20-{key[:24]}.safetensors" if self.cache_dir is not None else None

    def _read_cache(self, path: Path, key: str) -> dict[str, TensorDataset] | None:
        try:
            with safe_open(str(path), framework="pt") as cached:
                if (cached.metadata() or {}).get("key") != key:
                    return None
                tensors = {name: cached.get_tensor(name) for name in cached.keys()}  # noqa: SIM118 - not a dict
            return {split: self._dense_split(tensors, split) for split in SPLITS}
        except Exception as exc:  # noqa: BLE001 - a damaged cache is rebuilt, whatever the damage
            log.warning(
                "ignoring unreadable feature cache %s (%s: %s); rebuilding it", path, type(exc).__name__, exc
            )
            return None

    def _write_cache(self, path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
        staging = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written beside the target and renamed, so that a crash never leaves a half-written cache.
            handle, staging = tempfile.mkstemp(dir=path.parent, prefix=".newsgroups20-", suffix=".tmp")
            os.close(handle)
            os.chmod(staging, 0o644)  # mkstemp makes it private; the cache holds public data
            save_file(tensors, staging, metadata={"key": key})
            os.replace(staging, path)
        except OSError as exc:
            log.warning("could not write the feature cache %s (%s); continuing without it", path, exc)
            if staging is not None:
                Path(staging).unlink(missing_ok=True)

    def _dense_split(self, tensors: dict[str, torch.Tensor], split: str) -> TensorDataset:
        """Dense ``(N, vocab_size)`` features of one split from its stored CSR parts and labels.

        Columns past the fitted vocabulary (when the corpus has fewer terms than ``vocab_size``)
        stay zero, so the input size is the configured one.
        """
        labels = tensors[f"{split}_labels"]
        crow, col, values = (tensors[f"{split}_{part}"] for part in ("crow", "col", "values"))
        row_lengths = crow.diff()
        if (
            crow.shape != (labels.shape[0] + 1,)
            or crow[0] != 0
            or (row_lengths < 0).any()
            or not crow[-1] == col.numel() == values.numel()
            or (col.numel() and (col.min() < 0 or col.max() >= self.vocab_size))
        ):
            raise ValueError(f"{split}: inconsistent sparse features")
        rows = torch.repeat_interleave(torch.arange(labels.shape[0]), row_lengths)
        dense = torch.zeros((labels.shape[0], self.vocab_size), dtype=torch.float32)
        dense[rows, col] = values
        return TensorDataset(dense, labels)

    def read_documents(self, hub_dataset: DatasetDict | None = None) -> dict[str, Documents]:
        """Both splits' texts (stripped as ``remove`` says) and labels, from the configured source."""
        if self.resolved_source == "huggingface":
            # The Hub copy is published stripped; stripping twice eats text.
            return self._read_hub(hub_dataset if hub_dataset is not None else self._load_hub())
        documents = read_tarball(self.tarball_path)
        return {split: Documents(strip_posts(docs.texts, self.remove), docs.labels) for split, docs in documents.items()}

    def build_splits(self) -> Splits:
        source = self.resolved_source
        hub_dataset = None
        if source == "huggingface":
            hub_dataset = self._load_hub()
            # ``_fingerprint`` is datasets' hash of a split's content; there is no public accessor.
            identity: dict[str, object] = {
                "hub": self.hf_dataset_id,
                "fingerprints": [hub_dataset[split]._fingerprint for split in SPLITS if split in hub_dataset],
            }
        else:
            identity = _file_identity(self.tarball_path)
        key = self._cache_key(identity)
        path = self.cache_path(key)
        splits = self._read_cache(path, key) if path is not None and path.exists() else None
        if splits is not None:
            log.info("20 Newsgroups features loaded from %s", path)
        else:
            started = time.perf_counter()
            tensors = self._vectorize(self.read_documents(hub_dataset))
            log.info("20 Newsgroups features built from %s in %.1f s", source, time.perf_counter() - started)
            if path is not None:
                self._write_cache(path, key, tensors)
            splits = {split: self._dense_split(tensors, split) for split in SPLITS}
        return Splits(train=splits["train"], train_eval=splits["train"], test=splits["test"])
