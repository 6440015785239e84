"""The posts of 20 Newsgroups' bydate tarball: read in place, split, labelled and stripped as scikit-learn does."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from sklearn.datasets._twenty_newsgroups import (
    strip_newsgroup_footer,
    strip_newsgroup_header,
    strip_newsgroup_quoting,
)

from consparse.errors import ParameterError

NUM_CLASSES = 20
SPLITS = ("train", "test")
SPLIT_FOLDERS = {"20news-bydate-train": "train", "20news-bydate-test": "test"}
# What can be stripped from a post, in the order scikit-learn strips it, by the very functions
# fetch_20newsgroups(remove=...) applies (public functions, though their module is private).
STRIPPERS = {
    "headers": strip_newsgroup_header,
    "footers": strip_newsgroup_footer,
    "quotes": strip_newsgroup_quoting,
}


@dataclass
class Documents:
    """Texts of one split and their group indices (into the sorted group names)."""

    texts: list[str]
    labels: np.ndarray


def read_tarball(path: Path) -> dict[str, Documents]:
    """Both splits of the bydate tarball, read without extracting it.

    Posts are ordered by group, then by file name, as scikit-learn's ``load_files`` orders them.
    A file that is not a readable gzip tar (truncated, random bytes) is a ParameterError naming it.
    """
    posts: dict[str, list[tuple[str, str, str]]] = {split: [] for split in SPLITS}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                parts = PurePosixPath(member.name).parts
                if len(parts) < 3 or parts[-3] not in SPLIT_FOLDERS:
                    continue
                text = archive.extractfile(member).read().decode("latin-1")
                posts[SPLIT_FOLDERS[parts[-3]]].append((parts[-2], parts[-1], text))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise ParameterError(
            "root",
            f"{path} is not a readable 20news-bydate.tar.gz ({type(exc).__name__}: {exc}); it is damaged or "
            "truncated: delete it and copy or download it again",
        ) from exc
    groups = sorted({group for group, _, _ in posts["train"]})
    if len(groups) != NUM_CLASSES or {group for group, _, _ in posts["test"]} - set(groups):
        raise ParameterError(
            "root",
            f"{path}: found groups {groups[:3]}... ({len(groups)} in train); expected the 20 bydate groups "
            "under 20news-bydate-train/<group>/ and the same under 20news-bydate-test/<group>/"
        )
    label_of = {group: label for label, group in enumerate(groups)}
    documents = {}
    for split, entries in posts.items():
        entries.sort()
        documents[split] = Documents(
            [text for _, _, text in entries],
            np.array([label_of[group] for group, _, _ in entries], dtype=np.int64),
        )
    return documents


def strip_posts(texts: Sequence[str], remove: Sequence[str]) -> list[str]:
    """Remove headers, footers and/or quotes from each post, as ``fetch_20newsgroups(remove=...)`` does."""
    stripped = list(texts)
    for part, strip in STRIPPERS.items():
        if part in remove:
            stripped = [strip(text) for text in stripped]
    return stripped
