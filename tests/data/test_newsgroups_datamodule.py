"""20 Newsgroups on a small fake bydate tarball (20 groups), checked against scikit-learn itself."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.datasets import load_files
from sklearn.datasets._twenty_newsgroups import (
    strip_newsgroup_footer,
    strip_newsgroup_header,
    strip_newsgroup_quoting,
)
from sklearn.feature_extraction.text import TfidfVectorizer

from consparse.data import newsgroups
from consparse.data.newsgroups import NewsgroupsDataModule, read_tarball
from consparse.errors import DataNotFoundError, ParameterError

REPO = Path(__file__).resolve().parents[2]
GROUPS = sorted(f"{top}.group{index:02d}" for index, top in enumerate(["alt", "comp", "rec", "sci"] * 5))
TRAIN_PER_GROUP, TEST_PER_GROUP = 3, 2


def post(group_index: int, doc: int, split: str) -> bytes:
    """A Usenet post with a header, a quoted reply, a body and a signature; Latin-1 bytes."""
    body = f"topic{group_index} common words about item{doc} caf\xe9"
    if split == "test" and doc == 0:
        body += " unseenword"  # occurs in no training post: must get no TF-IDF column
    text = (
        f"From: user{doc}@example.com\nSubject: header{group_index}\nNewsgroups: {GROUPS[group_index]}\n\n"
        f"In article <1@x>, someone writes:\n> quoted{group_index} text\n{body}\n\n--\nsignature{group_index}\n"
    )
    return text.encode("latin-1")


def write_fake_tree(folder: Path) -> None:
    for split, count in (("train", TRAIN_PER_GROUP), ("test", TEST_PER_GROUP)):
        for group_index, group in enumerate(GROUPS):
            target = folder / f"20news-bydate-{split}" / group
            target.mkdir(parents=True, exist_ok=True)
            for doc in range(count):
                (target / str(1000 + doc)).write_bytes(post(group_index, doc, split))


def write_fake_tarball(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("test", TEST_PER_GROUP), ("train", TRAIN_PER_GROUP)):  # not in sorted order
            for group_index, group in reversed(list(enumerate(GROUPS))):
                for doc in range(count):
                    data = post(group_index, doc, split)
                    info = tarfile.TarInfo(f"20news-bydate-{split}/{group}/{1000 + doc}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def sklearn_reference(remove, vocab_size: int, stop_words="english") -> dict[str, np.ndarray]:
    """The expected features, computed with scikit-learn directly from the posts."""
    texts = {}
    for split, count in (("train", TRAIN_PER_GROUP), ("test", TEST_PER_GROUP)):
        posts = [post(g, d, split).decode("latin-1") for g in range(len(GROUPS)) for d in range(count)]
        for part, strip in (
            ("headers", strip_newsgroup_header),
            ("footers", strip_newsgroup_footer),
            ("quotes", strip_newsgroup_quoting),
        ):
            if part in remove:
                posts = [strip(text) for text in posts]
        texts[split] = posts
    vectorizer = TfidfVectorizer(
        max_features=vocab_size, sublinear_tf=True, stop_words=stop_words, dtype=np.float32
    )
    train = vectorizer.fit_transform(texts["train"]).toarray()
    test = vectorizer.transform(texts["test"]).toarray()
    pad = lambda matrix: np.pad(matrix, ((0, 0), (0, vocab_size - matrix.shape[1])))
    return {"train": pad(train), "test": pad(test), "vocabulary": vectorizer.vocabulary_}


@pytest.fixture
def tarball_root(tmp_path) -> Path:
    root = tmp_path / "data"
    write_fake_tarball(root / "20newsgroups" / "20news-bydate.tar.gz")
    return root


def features(datamodule: NewsgroupsDataModule) -> dict[str, torch.Tensor]:
    datamodule.setup()
    train_x, train_y = datamodule.train_eval_set.dataset.tensors
    test_x, test_y = datamodule.test_set.tensors
    return {"train": train_x, "train_labels": train_y, "test": test_x, "test_labels": test_y}


def test_info_needs_no_files(tmp_path):
    info = NewsgroupsDataModule(root=tmp_path / "nowhere", vocab_size=321).info
    assert (info.name, info.input_shape, info.num_classes, info.kind) == ("newsgroups20", (321,), 20, "text")


def test_read_tarball_orders_posts_like_load_files(tarball_root, tmp_path):
    documents = read_tarball(tarball_root / "20newsgroups" / "20news-bydate.tar.gz")
    write_fake_tree(tmp_path / "tree")
    for split in ("train", "test"):
        reference = load_files(tmp_path / "tree" / f"20news-bydate-{split}", encoding="latin1", shuffle=False)
        assert documents[split].texts == reference.data
        assert documents[split].labels.tolist() == reference.target.tolist()
    assert "caf\xe9" in documents["train"].texts[0]


@pytest.mark.parametrize("remove", [(), ("headers",), ("headers", "footers", "quotes")])
def test_features_match_scikit_learn(tarball_root, remove):
    datamodule = NewsgroupsDataModule(root=tarball_root, remove=list(remove), vocab_size=60, download=False)
    got = features(datamodule)
    expected = sklearn_reference(remove, 60)
    assert got["train"].shape == (20 * TRAIN_PER_GROUP, 60) and got["train"].dtype == torch.float32
    np.testing.assert_allclose(got["train"].numpy(), expected["train"], atol=1e-6)
    np.testing.assert_allclose(got["test"].numpy(), expected["test"], atol=1e-6)
    assert got["train_labels"].tolist() == [g for g in range(20) for _ in range(TRAIN_PER_GROUP)]
    assert ("header0" in expected["vocabulary"]) == ("headers" not in remove)


def test_small_vocabulary_is_padded_and_fitted_on_train_only(tarball_root):
    got = features(NewsgroupsDataModule(root=tarball_root, vocab_size=5000, download=False, stop_words=None))
    expected = sklearn_reference(("headers", "footers", "quotes"), 5000, stop_words=None)
    assert "unseenword" not in expected["vocabulary"]
    assert got["train"].shape == (60, 5000)
    assert torch.count_nonzero(got["train"][:, len(expected["vocabulary"]) :]) == 0
    np.testing.assert_allclose(got["test"].numpy(), expected["test"], atol=1e-6)


def test_split_sizes_and_validation_split_ignore_the_run_seed(tarball_root):
    def split(run_seed: int) -> tuple[int, int, int, list[int]]:
        pl.seed_everything(run_seed)
        datamodule = NewsgroupsDataModule(root=tarball_root, vocab_size=50, val_fraction=0.2, download=False)
        datamodule.setup()
        sizes = (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set))
        return (*sizes, list(datamodule.val_set.indices))

    first, second = split(10), split(11)
    assert first[:3] == (48, 12, 20 * TEST_PER_GROUP)
    assert first == second


def test_cache_is_used_keyed_and_rebuilt_when_damaged(tarball_root, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    fresh = features(
        NewsgroupsDataModule(root=tarball_root, vocab_size=40, cache_dir=cache_dir, download=False)
    )
    cached_files = list(cache_dir.glob("newsgroups20-*.safetensors"))
    assert len(cached_files) == 1

    def must_not_read(path):
        raise AssertionError("the tarball was read although the cache is valid")

    monkeypatch.setattr(newsgroups, "read_tarball", must_not_read)
    again = features(
        NewsgroupsDataModule(root=tarball_root, vocab_size=40, cache_dir=cache_dir, download=False)
    )
    for key in fresh:
        assert torch.equal(fresh[key], again[key])
    monkeypatch.undo()

    other = NewsgroupsDataModule(root=tarball_root, vocab_size=41, cache_dir=cache_dir, download=False)
    assert features(other)["train"].shape[1] == 41
    assert len(list(cache_dir.glob("newsgroups20-*.safetensors"))) == 2

    cached_files[0].write_bytes(b"\x00garbage, not safetensors")
    rebuilt = features(
        NewsgroupsDataModule(root=tarball_root, vocab_size=40, cache_dir=cache_dir, download=False)
    )
    assert torch.equal(rebuilt["train"], fresh["train"])
    monkeypatch.setattr(newsgroups, "read_tarball", must_not_read)
    assert torch.equal(
        features(NewsgroupsDataModule(root=tarball_root, vocab_size=40, cache_dir=cache_dir))["test"],
        fresh["test"],
    )


def test_cache_is_invalidated_when_the_tarball_changes(tarball_root, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    features(NewsgroupsDataModule(root=tarball_root, vocab_size=40, cache_dir=cache_dir, download=False))
    tarball = tarball_root / "20newsgroups" / "20news-bydate.tar.gz"
    stat = tarball.stat()
    os.utime(tarball, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    reads = []
    original = newsgroups.read_tarball
    monkeypatch.setattr(newsgroups, "read_tarball", lambda path: reads.append(path) or original(path))
    features(NewsgroupsDataModule(root=tarball_root, vocab_size=40, cache_dir=cache_dir, download=False))
    assert reads == [tarball]


def serve_tarball(monkeypatch, tarball: Path, urls: list[str]) -> None:
    """torchvision's download_url (which download_verified uses) copying ``tarball``, with its SHA-256 official."""

    def fake_download(url, root, filename, md5):
        urls.append(url)
        Path(root, filename).write_bytes(tarball.read_bytes())

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    monkeypatch.setattr(
        newsgroups,
        "SKLEARN_ARCHIVE",
        newsgroups.SKLEARN_ARCHIVE._replace(checksum=hashlib.sha256(tarball.read_bytes()).hexdigest()),
    )


def test_sklearn_source_downloads_the_tarball_and_gives_the_same_features(tarball_root, tmp_path, monkeypatch):
    urls: list[str] = []
    serve_tarball(monkeypatch, tarball_root / "20newsgroups" / "20news-bydate.tar.gz", urls)
    from_sklearn = NewsgroupsDataModule(root=tmp_path / "home", vocab_size=70, download=True)
    assert from_sklearn.resolved_source == "sklearn"
    from_tarball = NewsgroupsDataModule(root=tarball_root, vocab_size=70, download=False)
    assert from_tarball.resolved_source == "tarball"
    a, b = features(from_sklearn), features(from_tarball)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert urls == [newsgroups.SKLEARN_ARCHIVE.url]
    assert (tmp_path / "home" / "20newsgroups" / "20news-bydate.tar.gz").exists()


def test_sklearn_download_with_the_wrong_checksum_keeps_nothing(tarball_root, tmp_path, monkeypatch):
    serve_tarball(monkeypatch, tarball_root / "20newsgroups" / "20news-bydate.tar.gz", [])
    monkeypatch.setattr(newsgroups, "SKLEARN_ARCHIVE", newsgroups.SKLEARN_ARCHIVE._replace(checksum="0" * 64))
    with pytest.raises(DataNotFoundError, match="SHA256"):
        NewsgroupsDataModule(root=tmp_path / "home", download=True).check_available()
    assert not (tmp_path / "home" / "20newsgroups" / "20news-bydate.tar.gz").exists()


class FileCreator:
    """A pickle payload: unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_sklearn_pickle_cache_is_never_read(tmp_path):
    # scikit-learn's cache format exactly (a zlib-compressed pickle), holding a payload.
    marker = tmp_path / "pwned"
    pkz = tmp_path / "root" / "20news-bydate_py3.pkz"
    pkz.parent.mkdir()
    pkz.write_bytes(codecs.encode(pickle.dumps({"train": FileCreator(marker)}), "zlib_codec"))
    for source in ("auto", "sklearn"):
        with pytest.raises(DataNotFoundError) as error:
            NewsgroupsDataModule(root=tmp_path / "root", source=source, download=False).setup()
        assert str(pkz) in str(error.value) and "not read" in str(error.value)
        assert str(tmp_path / "root" / "20newsgroups" / "20news-bydate.tar.gz") in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_damaged_tarball_names_the_file(tarball_root, damage):
    tarball = tarball_root / "20newsgroups" / "20news-bydate.tar.gz"
    content = tarball.read_bytes()
    tarball.write_bytes({"random": os.urandom(5000), "truncated": content[: len(content) // 2], "empty": b""}[damage])
    with pytest.raises(ParameterError) as error:
        NewsgroupsDataModule(root=tarball_root, download=False).setup()
    assert error.value.name == "root"
    assert str(tarball) in str(error.value) and "not a readable 20news-bydate.tar.gz" in str(error.value)


@pytest.mark.slow
def test_random_bytes_tarball_is_one_line_from_the_command_line(tmp_path):
    tarball = tmp_path / "data" / "20newsgroups" / "20news-bydate.tar.gz"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(os.urandom(5000))
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "method=dense", "dataset=newsgroups20", f"dataset.root={tmp_path / 'data'}",
         "dataset.cache_dir=null", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("consparse: error: dataset.root: ") and str(tarball) in lines[0]


def test_missing_data_names_both_ways_to_get_it(tmp_path):
    datamodule = NewsgroupsDataModule(root=tmp_path, download=False)
    with pytest.raises(DataNotFoundError) as error:
        datamodule.setup()
    message = str(error.value)
    assert str(tmp_path / "20newsgroups" / "20news-bydate.tar.gz") in message
    assert newsgroups.SKLEARN_ARCHIVE.url in message and "20news-bydate_py3.pkz" not in message


def test_offline_sklearn_download_fails_fast_with_a_timeout(tmp_path, monkeypatch):
    timeouts = []

    def offline_download(url, root, filename, md5):
        timeouts.append(socket.getdefaulttimeout())
        assert url == newsgroups.SKLEARN_ARCHIVE.url
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline_download)
    with pytest.raises(DataNotFoundError) as error:
        NewsgroupsDataModule(root=tmp_path, download=True, download_timeout=1.5).check_available()
    assert timeouts == [1.5]
    assert "download failed" in str(error.value) and str(tmp_path / "20newsgroups" / "20news-bydate.tar.gz") in str(
        error.value
    )


def test_tarball_source_does_not_pretend_to_download(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        NewsgroupsDataModule(root=tmp_path, source="tarball", download=True).check_available()
    assert str(tmp_path / "20newsgroups" / "20news-bydate.tar.gz") in str(error.value)
    assert "local copy only" in str(error.value)


def test_huggingface_source(tmp_path, monkeypatch):
    from datasets import Dataset, DatasetDict

    def split(count: int, kind: str) -> Dataset:
        texts = [f"topic{g} common words {kind}{d}" for g in range(20) for d in range(count)]
        labels = [g for g in range(20) for _ in range(count)]
        return Dataset.from_dict({"text": texts, "label": labels, "label_text": [GROUPS[g] for g in labels]})

    hub = DatasetDict({"train": split(TRAIN_PER_GROUP, "train"), "test": split(TEST_PER_GROUP, "test")})
    calls = []
    monkeypatch.setattr(newsgroups, "load_hub_dataset", lambda *args, **kwargs: calls.append(args) or hub)
    datamodule = NewsgroupsDataModule(
        root=tmp_path, source="huggingface", vocab_size=30, cache_dir=tmp_path / "cache"
    )
    got = features(datamodule)
    assert calls[0][1:] == ("SetFit/20_newsgroups", tmp_path)
    vectorizer = TfidfVectorizer(max_features=30, sublinear_tf=True, stop_words="english", dtype=np.float32)
    expected = vectorizer.fit_transform(hub["train"]["text"]).toarray()
    np.testing.assert_allclose(got["train"][:, : expected.shape[1]].numpy(), expected, atol=1e-6)
    assert got["test_labels"].tolist() == [g for g in range(20) for _ in range(TEST_PER_GROUP)]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_huggingface_copy_is_already_stripped(tmp_path):
    with pytest.raises(ParameterError) as error:
        NewsgroupsDataModule(root=tmp_path, source="huggingface", remove=["headers"])
    assert error.value.name == "remove"


def test_unwritable_cache_dir_only_costs_the_cache(tarball_root, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    datamodule = NewsgroupsDataModule(
        root=tarball_root, vocab_size=40, cache_dir=blocker / "cache", download=False
    )
    assert features(datamodule)["train"].shape == (60, 40)
    assert "could not write the feature cache" in caplog.text
    assert blocker.read_text() == "not a folder"
