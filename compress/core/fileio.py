"""Atomic file writes and content hashes: an interrupted run never leaves a half-written file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(config: Any) -> str:
    """Stable short hash of a config (pydantic model, dict or scalar)."""
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only on success.

    An interrupted write never leaves a half-written file under the final name. The data
    is flushed to disk before the rename, so a crash of the machine (not only of the
    process) cannot leave an empty file under the final name either.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            # mkstemp creates 0600; a run folder's reports and models get what open() would give
            os.chmod(tmp_path, 0o666 & ~_umask())
            fsync_path(tmp_path)
        os.replace(tmp_path, dest)
    except OSError as e:
        if e.errno in _NO_ROOM and e.filename in (None, tmp):
            # say which file could not be written (a writer's error names no file, or the .part)
            raise OSError(e.errno, e.strerror, str(dest)) from e
        raise
    finally:
        # a failed write (full disk, read-only file system) must surface as itself, not as a
        # second error while cleaning up; a .part left behind is removed by the next run
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entry list) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def zipped_size(path: Path) -> int:
    """Bytes of ``path`` in a deflate-compressed zip, as in a mobile bundle or APK."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(path, arcname=path.name)
    return buf.getbuffer().nbytes


def atomic_write_text(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_with(dest: Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        writer(tmp)

