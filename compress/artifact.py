"""Artifacts: the models a run produces, with their lineage.

Inside one torch stage a live ``nn.Module`` may pass from step to step (``module``);
at every format boundary the artifact is a file on disk (``path``), because remote
targets, the cache and the bundle need files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ArtifactFormat = Literal["torch", "pt2", "onnx", "tflite"]
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
            _fsync(tmp_path)
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


def _fsync(path: Path) -> None:
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


@dataclass
class Artifact:
    """A model produced by a run.

    Args:
        name: Unique name within the run, e.g. ``onnx-fp32``, ``tflite-int8``.
        format: torch (live module), pt2, onnx or tflite.
        path: The file on disk; None only for a live torch module not yet saved.
        module: The live ``nn.Module`` inside a torch stage.
        parent: Name of the artifact this one was made from.
        step: The step or export that made it, e.g. ``02-prune`` or ``export:onnx``.
        config_hash: Hash of the config of that step.
        precision: fp32, fp16, int8 or mixed.
        metadata: Layout, quantization parameters and other facts the bundle needs.
    """

    name: str
    format: ArtifactFormat
    path: Path | None = None
    module: Any = None
    parent: str | None = None
    step: str | None = None
    config_hash: str | None = None
    precision: str = "fp32"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int | None:
        return self.path.stat().st_size if self.path is not None and self.path.exists() else None

    @property
    def sha256(self) -> str | None:
        return sha256_file(self.path) if self.path is not None and self.path.is_file() else None

    def derive(self, **changes: Any) -> Artifact:
        """A child artifact: same metadata, this one as parent.

        Keys starting with ``_`` are the run's private state about this very artifact (its
        parity, benchmark results, its cached ONNX export) and are not inherited.
        """
        base = {
            "name": self.name,
            "format": self.format,
            "path": None,
            "module": None,
            "parent": self.name,
            "precision": self.precision,
            "metadata": {k: v for k, v in self.metadata.items() if not k.startswith("_")},
        }
        base.update(changes)
        return Artifact(**base)
