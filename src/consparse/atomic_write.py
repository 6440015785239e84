"""Writing a file so that readers see the old content or the new one, never a truncated mix.

The data goes to a temporary file beside the target, is flushed to disk, then renamed over the
target (``os.replace`` is atomic within one file system). The temporary file is created with
``os.open(..., 0o666)`` so the user's umask decides its mode, as for every other file the run
writes; ``tempfile.mkstemp`` would make it private (0600) and hide results from colleagues.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target
