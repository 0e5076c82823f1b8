"""The step cache's files: what an entry holds (:class:`CacheHit`, :class:`CacheEntry`), and
the small helpers of its layout (atomic JSON, sizes, the cache root, ``30d``/``10G`` parsing).
The store itself is :mod:`compress.runner.stepcache`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any



# ---------------------------------------------------------------- small file helpers


def _write_json_atomic(dest: Path, obj: Any) -> None:
    """Write to a temp name in the same folder, fsync, rename onto ``dest``."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tree_size(path: Path) -> int:
    total = 0
    for top, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _safe_name(name: str) -> bool:
    """A relative POSIX name that stays inside the folder it is joined to."""
    # a leading "/" makes an empty first part; a backslash is a separator on Windows
    return "\\" not in name and "\0" not in name and all(p not in ("", ".", "..") for p in name.split("/"))


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def cache_root() -> Path:
    """``$EDGEPACK_CACHE`` if set and not empty, else ``~/.cache/edgepack``."""
    env = os.environ.get("EDGEPACK_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgepack"


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from ``123``, ``512M``, ``10G`` or ``10GiB`` (binary units).

    Raises:
        ValueError: anything else, saying what is accepted.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid size {text!r}: expected a byte count, optionally with K, M, G or T (e.g. 10G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> timedelta:
    """A timedelta from ``30d``, ``12h``, ``90m`` or ``45s`` (a non-negative number and one unit).

    Raises:
        ValueError: anything else, saying what is accepted.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(text))
    if not m:
        raise ValueError(f"invalid age {text!r}: expected a number followed by s, m, h or d "
                         f"(e.g. 30d, 12h, 90m, 45s)")
    return timedelta(seconds=float(m.group(1)) * _AGE_UNITS[m.group(2)])


@dataclass(frozen=True)
class CachedFile:
    """One file of a cache entry."""

    name: str
    sha256: str
    size: int
    path: Path


@dataclass(frozen=True)
class CacheHit:
    """A complete, verified entry: its payload and files.

    Args:
        digest: The key's digest.
        path: The entry folder.
        payload: What the caller stored.
        files: Relative name -> the cached file.
        created: When the entry was stored (UTC).
    """

    digest: str
    path: Path
    payload: dict[str, Any]
    files: dict[str, CachedFile]
    created: datetime

    def materialise(self, dest_dir: str | Path) -> dict[str, Path]:
        """Place the cached files under ``dest_dir`` with their relative names: relative name -> path.

        Hard links when the cache is on the same file system (the linked files are read-only
        and shared with the cache and other runs: replace them, never write into them), else
        copies. Each file appears under its final name only once complete (``.part``, then
        rename); on failure the files this call placed are removed and the error raised.

        Raises:
            OSError: the entry vanished (evicted meanwhile: treat as a miss) or ``dest_dir``
                is not writable.
        """
        dest_dir = Path(dest_dir)
        placed: dict[str, Path] = {}
        try:
            for name, cf in self.files.items():
                dest = dest_dir / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
                try:
                    try:
                        os.link(cf.path, part)
                    except OSError:
                        shutil.copy2(cf.path, part)
                        # an independent copy: the run may do what it likes with it
                        os.chmod(part, stat.S_IMODE(os.stat(part).st_mode) | stat.S_IWUSR)
                    os.replace(part, dest)
                finally:
                    part.unlink(missing_ok=True)
                placed[name] = dest
        except BaseException:
            for p in placed.values():
                p.unlink(missing_ok=True)
            raise
        return placed


@dataclass(frozen=True)
class CacheEntry:
    """One folder of the step cache, as ``compress cache ls`` shows it."""

    digest: str
    kind: str
    size_bytes: int
    created: datetime
    last_used: datetime
    complete: bool
    path: Path
