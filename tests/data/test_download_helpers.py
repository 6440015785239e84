"""Download helpers against servers on the loopback interface (a working one and a silent one),
and the checks on archives before they are unpacked.

The silent server accepts connections and never answers, which is what a firewalled network looks
like; the point is that nothing hangs.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import stat
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from torchvision.datasets import MNIST

from consparse.data import download
from consparse.data.download import (
    check_digest,
    download_verified,
    load_hub_dataset,
    safe_extract,
    socket_timeout,
)
from consparse.data.mnist import MNISTDataModule
from consparse.errors import DataNotFoundError, ParameterError


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "served"``; yields (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_server():
    """A listening socket on 127.0.0.1 that never accepts or answers; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    listener.close()


def test_socket_timeout_is_restored():
    before = socket.getdefaulttimeout()
    with socket_timeout(1.25):
        assert socket.getdefaulttimeout() == 1.25
    assert socket.getdefaulttimeout() == before


def test_download_verified_checks_the_checksum_and_keeps_no_residue(file_server, tmp_path):
    base_url, served = file_server
    (served / "file.bin").write_bytes(b"payload")
    target_dir = tmp_path / "target"
    path = download_verified(
        [base_url + "file.bin"], target_dir, "file.bin", hashlib.md5(b"payload").hexdigest(), 5.0
    )
    assert path == target_dir / "file.bin" and path.read_bytes() == b"payload"

    with pytest.raises(OSError, match="could not download other.bin"):
        download_verified([base_url + "file.bin"], target_dir, "other.bin", "0" * 32, 5.0)
    assert sorted(p.name for p in target_dir.iterdir()) == ["file.bin"]


def test_download_verified_falls_back_to_the_next_mirror(file_server, tmp_path):
    base_url, served = file_server
    (served / "file.bin").write_bytes(b"payload")
    urls = [base_url + "missing/file.bin", base_url + "file.bin"]
    assert download_verified(urls, tmp_path, "file.bin", None, 5.0).read_bytes() == b"payload"


def test_silent_network_gives_data_not_found_within_seconds(silent_server, tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", [silent_server])
    datamodule = MNISTDataModule(root=tmp_path, download=True, download_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DataNotFoundError) as error:
        datamodule.check_available()
    assert time.monotonic() - started < 10
    assert "download failed" in str(error.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in str(error.value)
    assert [p.name for p in (tmp_path / "MNIST" / "raw").iterdir()] == []


def test_hub_loading_without_network_permission_reads_only_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "hub_reachable", lambda timeout: pytest.fail("must not probe the Hub"))
    started = time.monotonic()
    with pytest.raises(DataNotFoundError) as error:
        load_hub_dataset("toy", "someone/SomeSet", tmp_path, allow_network=False)
    assert time.monotonic() - started < 10
    message = str(error.value)
    assert "'someone/SomeSet'" in message and str(tmp_path / "someone___some_set") in message
    assert "download is false" in message


def test_hub_loading_gives_up_quickly_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    probes = []
    monkeypatch.setattr(download, "hub_reachable", lambda timeout: probes.append(timeout) or False)
    monkeypatch.setattr(download, "hub_offline_by_environment", lambda: False)
    with pytest.raises(DataNotFoundError, match=r"could not be reached \(no connection within 2 s\)"):
        load_hub_dataset("toy", "someone/set", tmp_path, allow_network=True, timeout=2.0)
    assert probes == [2.0]


def test_hub_offline_environment_is_respected(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "hub_offline_by_environment", lambda: True)
    monkeypatch.setattr(download, "hub_reachable", lambda timeout: pytest.fail("must not probe the Hub"))
    with pytest.raises(DataNotFoundError, match="HF_HUB_OFFLINE"):
        load_hub_dataset("toy", "someone/set", tmp_path, allow_network=True)


def test_hub_reachable_is_false_for_a_closed_port(monkeypatch):
    import huggingface_hub.constants

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert download.hub_reachable(1.0) is False


def test_hub_loading_uses_the_cache_in_offline_mode(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    seen = []

    def fake_load_dataset(dataset_id, cache_dir):
        seen.append(
            (dataset_id, cache_dir, huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
        )
        return "the cached dataset"

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    modes_before = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    assert load_hub_dataset("toy", "someone/set", Path(tmp_path), allow_network=False) == "the cached dataset"
    assert seen == [("someone/set", str(tmp_path), True, True)]
    assert (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == modes_before


def tar_with(path: Path, *members: tarfile.TarInfo, data: bytes = b"payload") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return path


def symlink_member(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.SYMTYPE, target
    return member


@pytest.mark.parametrize(
    ("member", "shown"),
    [
        (tarfile.TarInfo("../escape.txt"), "../escape.txt"),
        (tarfile.TarInfo("/tmp/consparse-absolute-escape.txt"), "absolute path"),
        (symlink_member("folder/link", "/etc/passwd"), "folder/link"),
        (symlink_member("folder/up", "../../outside"), "folder/up"),
    ],
    ids=["dotdot", "absolute", "absolute-link", "escaping-link"],
)
def test_unsafe_tar_members_are_refused_before_anything_is_written(tmp_path, member, shown):
    archive = tar_with(tmp_path / "a.tar.gz", tarfile.TarInfo("folder/good.txt"), member)
    destination = tmp_path / "root" / "inside"
    with pytest.raises(ParameterError) as error:
        safe_extract(archive, destination)
    assert error.value.name == "root" and str(archive) in str(error.value) and shown in str(error.value)
    assert list(destination.iterdir()) == []
    assert not (tmp_path / "root" / "escape.txt").exists()
    assert not Path("/tmp/consparse-absolute-escape.txt").exists()


def test_safe_tar_is_unpacked_with_its_inner_links(tmp_path):
    archive = tar_with(tmp_path / "a.tar.gz", tarfile.TarInfo("folder/good.txt"), symlink_member("folder/alias", "good.txt"))
    safe_extract(archive, tmp_path / "root")
    assert (tmp_path / "root" / "folder" / "alias").read_bytes() == b"payload"


def test_unsafe_zip_members_are_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("folder/good.txt", "ok")
        zipped.writestr("../escape.txt", "owned")
    with pytest.raises(ParameterError, match=r"'\.\./escape\.txt'"):
        safe_extract(archive, tmp_path / "root")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "root" / "folder").exists()
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zipped:
        info = zipfile.ZipInfo("folder/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(info, "/etc/passwd")
    with pytest.raises(ParameterError, match="symbolic link"):
        safe_extract(link, tmp_path / "root2")


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_damaged_archive_names_the_file(tmp_path, damage):
    archive = tar_with(tmp_path / "a.tar.gz", *(tarfile.TarInfo(f"f{i}") for i in range(50)), data=os.urandom(4096))
    content = archive.read_bytes()
    archive.write_bytes(os.urandom(2000) if damage == "random" else content[: len(content) // 2])
    with pytest.raises(ParameterError) as error:
        safe_extract(archive, tmp_path / "root")
    assert str(archive) in str(error.value) and "not a readable archive" in str(error.value)


def test_check_digest_names_the_file(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"abc")
    check_digest(path, "900150983cd24fb0d6963f7d28e17f72")
    with pytest.raises(ParameterError, match=str(path)):
        check_digest(path, "0" * 32)
