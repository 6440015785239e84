"""Fetching, checking and unpacking dataset files.

torchvision and scikit-learn download through urllib, which waits forever on a silent network
unless a socket timeout is set; the Hugging Face Hub client retries for about half a minute before
giving up. These helpers bound both, so that a missing dataset becomes a ``DataNotFoundError``
within seconds.

Archives may come from anyone (a colleague's copy, a mirror), so they are unpacked only after every
member has passed ``tarfile``'s ``data`` filter (or the same rules for zip files): nothing is written
outside the destination, no link points out of it, and no device or special file is created.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from torchvision.datasets import utils as torchvision_utils

from consparse.errors import DataNotFoundError, ParameterError

# `datasets` takes over a second to import, so it is imported only where the Hub is used.
if TYPE_CHECKING:
    from datasets import DatasetDict

# Seconds a single blocking network operation may take before the download counts as failed.
DEFAULT_DOWNLOAD_TIMEOUT = 20.0


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking socket operation started while the context is active.

    ``socket.setdefaulttimeout`` is process-wide, so the previous value is restored on exit.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of the file's bytes (``md5`` or ``sha256``), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(path: Path, expected: str, algorithm: str = "md5") -> None:
    """Raise a ParameterError on ``root`` (the data module's) naming ``path`` when its digest is not ``expected``."""
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise ParameterError(
            "root",
            f"{path} has {algorithm.upper()} {actual}, not the official {expected}: it is not the published "
            "file (damaged, truncated or replaced); delete it and download it again",
        )


def download_verified(
    urls: Sequence[str],
    folder: Path,
    filename: str,
    md5: str | None,
    timeout: float,
    sha256: str | None = None,
) -> Path:
    """Download ``filename`` from the first of ``urls`` that works into ``folder``; return its path.

    torchvision's ``download_url`` writes straight to the target and leaves a truncated or corrupt
    file behind when a transfer fails, which would later pass for a present file. Here it writes
    into a staging folder and the file is moved into place only once complete and checked (MD5
    by torchvision, SHA-256 here when given).
    """
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    with socket_timeout(timeout), tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as staging:
        for url in urls:
            try:
                torchvision_utils.download_url(url, staging, filename, md5)
                if sha256 is not None:
                    check_digest(Path(staging) / filename, sha256, "sha256")
            except Exception as exc:  # noqa: BLE001 - network errors, timeouts and checksum mismatches alike
                errors.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            target = folder / filename
            os.replace(Path(staging) / filename, target)
            return target
    raise OSError(f"could not download {filename}: " + "; ".join(errors))


def _refuse_member(archive: Path, name: str, why: str) -> ParameterError:
    return ParameterError(
        "root",
        f"{archive}: refusing to unpack it, member {name!r} {why}; nothing was extracted. "
        "Use the official archive",
    )


def _check_tar_members(archive: Path, tar: tarfile.TarFile, destination: Path) -> list[tarfile.TarInfo]:
    """Every member as the ``data`` filter passes it; the first one it refuses raises."""
    checked = []
    for member in tar.getmembers():
        if os.path.isabs(member.name):
            raise _refuse_member(archive, member.name, "has an absolute path")
        try:
            checked.append(tarfile.data_filter(member, str(destination)))
        except tarfile.FilterError as exc:
            raise _refuse_member(archive, member.name, f"is unsafe ({type(exc).__name__}: {exc})") from exc
    return checked


def _check_zip_members(archive: Path, zipped: zipfile.ZipFile, destination: Path) -> None:
    """The ``data`` filter's rules for zip members: inside ``destination`` and no links.

    ``zipfile`` itself rewrites ``..`` and absolute names silently; refusing them instead says the
    archive is not what it claims to be.
    """
    root = os.path.realpath(destination)
    for info in zipped.infolist():
        target = os.path.realpath(os.path.join(root, info.filename))
        if os.path.isabs(info.filename) or os.path.commonpath([root, target]) != root:
            raise _refuse_member(archive, info.filename, "would be written outside the destination")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _refuse_member(archive, info.filename, "is a symbolic link")


def safe_extract(archive: Path, destination: Path) -> None:
    """Unpack a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive into ``destination``.

    Every member is checked before the first one is written, so that a refused archive leaves
    nothing behind; a damaged archive is a ParameterError naming it.
    """
    destination.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                _check_zip_members(archive, zipped, destination)
                zipped.extractall(destination)
            return
        with tarfile.open(archive) as tar:
            members = _check_tar_members(archive, tar, destination)
            tar.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ParameterError(
            "root",
            f"{archive} is not a readable archive ({type(exc).__name__}: {exc}); delete it and download it again",
        ) from exc


@contextmanager
def hub_offline() -> Iterator[None]:
    """Make ``datasets`` read only its local cache, as ``HF_HUB_OFFLINE=1`` would at start-up.

    Both libraries read the environment variable once, at import, into these module constants;
    setting them (and restoring them after) is the only way to switch offline mode for one call.
    """
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = (hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    hub_constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def hub_offline_by_environment() -> bool:
    """True when the user set ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``."""
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def hub_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds."""
    import huggingface_hub.constants

    endpoint = urlparse(huggingface_hub.constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub_dataset(
    dataset_name: str,
    dataset_id: str,
    cache_dir: Path,
    *,
    allow_network: bool,
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
) -> DatasetDict:
    """``datasets.load_dataset(dataset_id, cache_dir=cache_dir)``, from the cache when possible.

    The cache is tried first in offline mode (instant); the Hub is contacted only when
    ``allow_network`` is true, offline mode is not set in the environment and the endpoint answers
    within ``timeout``. Any failure becomes a DataNotFoundError that says where the cache is expected
    and how to fill it.
    """
    import datasets
    from datasets.naming import camelcase_to_snakecase

    try:
        with hub_offline():
            return datasets.load_dataset(dataset_id, cache_dir=str(cache_dir))
    except Exception as exc:  # noqa: BLE001 - any failure here means "not in the cache"
        problem = f"It is not in the local cache ({type(exc).__name__})."
    if not allow_network:
        problem += " dataset.download is false, so the Hub was not contacted."
    elif hub_offline_by_environment():
        problem += " HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so the Hub was not contacted."
    elif not hub_reachable(timeout):
        problem += f" The Hugging Face Hub could not be reached (no connection within {timeout:g} s)."
    else:
        try:
            with socket_timeout(timeout):
                return datasets.load_dataset(dataset_id, cache_dir=str(cache_dir))
        except Exception as exc:  # noqa: BLE001 - any network or IO failure means "not available"
            problem += f" The download failed ({type(exc).__name__}: {exc})."
    namespace, _, name = dataset_id.rpartition("/")
    cache_folder = cache_dir / "___".join(filter(None, [namespace, camelcase_to_snakecase(name)]))
    raise DataNotFoundError(
        f"dataset '{dataset_name}': Hugging Face dataset '{dataset_id}' not found under "
        f"dataset.root={cache_dir} (expected its cache in {cache_folder}).\n{problem}\n"
        f"To get it, run once on a machine with network and dataset.download=true (it is saved in "
        f"{cache_dir}), or copy that cache folder from such a machine."
    )
