"""A content-addressed cache of step outputs, and of evaluation results.

Entries are stored under their key's digest (:class:`compress.runner.stepkey.StepKey`:
everything a step's output was computed from, hashed); evaluation results are
:mod:`compress.runner.evalcache`.

Layout (the root is ``$EDGEPACK_CACHE``, else ``~/.cache/edgepack``)::

    <root>/steps/<digest>/files/...     the files the step produced (read-only)
                         /key.json      StepKey.describe()
                         /used          its mtime is the last hit (LRU without rewriting result.json)
                         /result.json   payload, file list with sha256 and sizes, created time
    <root>/steps/.lock                  flock held while entries are evicted, pruned or cleared
    <root>/evals/<digest>.json          EvalCache: small JSON results

An entry is assembled in a hidden temp folder beside the others, ``result.json`` last, and
published by renaming the folder, so no reader ever sees half an entry and two processes
storing one key cannot corrupt it (the second rename fails; that process drops its copy).
An entry folder without ``result.json`` (damage, a crash on a file system that reordered
writes) is a miss; a file whose size or sha256 changed makes the entry corrupt: it is
removed and the lookup misses. Storing never fails a run: every error makes :meth:`StepCache.store`
return False. ``$EDGEPACK_CACHE_MAX_BYTES`` (a byte count, or with a K/M/G/T suffix, binary)
caps the step cache, 10 GiB by default; the least recently used entries go first.

Measured latencies are never cached, in either cache: a timing belongs to the moment and
the machine it was taken on, and reusing one would report a number nobody measured.

This module imports only the kernel's file hashing of the project, and nothing heavier than
numpy; torch is imported only inside :func:`hash_state_dict`. How a run keys and stores its
steps is :mod:`compress.runner.runcache`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from compress.core.fileio import fsync_path, sha256_file
from compress.runner.cachefiles import (  # noqa: F401  (parse_size, parse_age: the CLI reads them here)
    CacheEntry, CachedFile, CacheHit, _mtime, _safe_name, _tree_size, _utc, _write_json_atomic, cache_root, parse_age,
    parse_size,
)
from compress.runner.stepkey import StepKey, _canonical

RESULT_SCHEMA = 1
DEFAULT_MAX_BYTES = 10 * 1024**3
STALE_PARTIAL = timedelta(hours=1)

_RESULT = "result.json"
_KEY = "key.json"
_USED = "used"
_FILES = "files"
_LOCK = ".lock"
_TMP = ".tmp-"
_TRASH = ".trash-"


def _default_max_bytes() -> int:
    env = os.environ.get("EDGEPACK_CACHE_MAX_BYTES", "").strip()
    if not env:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(env)
    except ValueError as exc:
        raise ValueError(f"EDGEPACK_CACHE_MAX_BYTES: {exc}") from None


class StepCache:
    """The step cache under ``<root>/steps``. Nothing is created on disk until the first store.

    Args:
        root: Cache root; default :func:`cache_root`.
        max_bytes: Cap on the step cache, enforced after each store by LRU eviction;
            default ``$EDGEPACK_CACHE_MAX_BYTES`` or 10 GiB.
        enabled: When False, lookups miss and stores do nothing.

    Raises:
        ValueError: ``$EDGEPACK_CACHE_MAX_BYTES`` is not a size.
    """

    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None, enabled: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.max_bytes = max_bytes if max_bytes is not None else _default_max_bytes()
        self.enabled = enabled
        self.last_store_error: str | None = None
        """Why the last :meth:`store` returned False (None after a success), for an advisory or a log line."""

    @property
    def steps_dir(self) -> Path:
        return self.root / "steps"

    # -- lookup

    def lookup(self, key: StepKey) -> CacheHit | None:
        """The verified entry for ``key``, or None.

        None when disabled, on a miss, on a partial entry (no ``result.json``) and on a
        corrupt one (unreadable result, a file missing or of another size or sha256), which
        is removed. Each file is read once to check its sha256. A hit marks the entry used.
        """
        if not self.enabled:
            return None
        entry = self.steps_dir / key.digest
        try:
            result = json.loads((entry / _RESULT).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            self._discard(entry)
            return None
        try:
            hit = self._verify(entry, key.digest, result)
        except FileNotFoundError:
            if entry.exists():  # gone from a live entry: damage; otherwise evicted meanwhile
                self._discard(entry)
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self._discard(entry)
            return None
        self._touch(entry)
        return hit

    def _verify(self, entry: Path, digest: str, result: dict[str, Any]) -> CacheHit:
        if result.get("schema") != RESULT_SCHEMA or result.get("digest") != digest:
            raise ValueError("not an entry of this key")
        files: dict[str, CachedFile] = {}
        for rec in result["files"]:
            name, sha, size = str(rec["name"]), str(rec["sha256"]), int(rec["size"])
            if not _safe_name(name):
                raise ValueError(f"unsafe name {name!r}")
            path = entry / _FILES / name
            if path.stat().st_size != size or sha256_file(path) != sha:
                raise ValueError(f"{name} changed")
            files[name] = CachedFile(name, sha, size, path)
        created = datetime.fromisoformat(result["created"])
        return CacheHit(digest, entry, dict(result["payload"]), files, created)

    def _touch(self, entry: Path) -> None:
        try:
            os.utime(entry / _USED)
        except FileNotFoundError:
            try:
                (entry / _USED).touch()
            except OSError:
                pass
        except OSError:
            pass  # a read-only cache still serves hits

    # -- store

    def store(self, key: StepKey, files: Mapping[str, str | Path], payload: Mapping[str, Any]) -> bool:
        """Copy ``files`` (relative name -> file) and ``payload`` (JSON-able) into the entry for ``key``.

        Never raises (except KeyboardInterrupt and the like) and logs nothing: a full disk,
        a read-only cache, an unsafe name or a payload that is not JSON-able all return False
        and set :attr:`last_store_error`, leaving no entry a lookup would trust. Returns True
        when a complete entry for the key is in the cache afterwards (this one, or one another
        process stored first, which is kept). Then evicts down to ``max_bytes``.
        """
        self.last_store_error = None
        if not self.enabled:
            self.last_store_error = "cache disabled"
            return False
        try:
            ok = self._store(key, files, payload)
        except Exception as exc:
            self.last_store_error = f"{type(exc).__name__}: {exc}"
            return False
        if not ok:
            self.last_store_error = "the entry could not be published (removed while storing)"
        try:
            self.evict_to(self.max_bytes)
        except Exception as exc:
            self.last_store_error = f"stored, but eviction failed: {type(exc).__name__}: {exc}"
        return ok

    def _store(self, key: StepKey, files: Mapping[str, str | Path], payload: Mapping[str, Any]) -> bool:
        digest = key.digest
        bad = [n for n in files if not _safe_name(n)]
        if bad:
            raise ValueError(f"file names must be relative POSIX names inside the step folder: {bad}")
        _canonical(dict(payload))  # not JSON-able: fail before touching the disk
        entry = self.steps_dir / digest
        if (entry / _RESULT).exists():
            self._touch(entry)
            return True
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP}{digest[:16]}-", dir=self.steps_dir))
        try:
            records = []
            for name, src in sorted(files.items()):
                if Path(src).is_dir():
                    raise IsADirectoryError(errno.EISDIR, "pass the files inside a folder one by one", str(src))
                dest = tmp / _FILES / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
                # read-only: a run folder hard-linked to it must not write through into the cache
                os.chmod(dest, stat.S_IMODE(os.stat(dest).st_mode) & ~0o222)
                fsync_path(dest)
                records.append({"name": name, "sha256": sha256_file(dest), "size": dest.stat().st_size})
            for top, _dirs, _names in os.walk(tmp / _FILES):
                fsync_path(Path(top))
            _write_json_atomic(tmp / _KEY, {**key.describe(), "digest": digest})
            (tmp / _USED).touch()
            _write_json_atomic(tmp / _RESULT, {
                "schema": RESULT_SCHEMA, "digest": digest, "kind": key.kind,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "files": records, "payload": dict(payload),
            })
            fsync_path(tmp)
            return self._publish(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, entry: Path) -> bool:
        for _ in range(2):
            try:
                os.rename(tmp, entry)
                fsync_path(self.steps_dir)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            if (entry / _RESULT).exists():
                return True  # another store won; ours is dropped
            self._discard(entry)  # a damaged partial entry: replace it
        return (entry / _RESULT).exists()

    # -- listing and eviction

    def _discard(self, path: Path) -> int:
        """Remove an entry (or temp folder): rename it aside first, so it vanishes at once. Bytes freed."""
        trash = path.with_name(f"{_TRASH}{uuid.uuid4().hex}")
        try:
            os.rename(path, trash)
        except OSError:
            return 0
        size = _tree_size(trash)
        shutil.rmtree(trash, ignore_errors=True)
        return size

    def _scan(self) -> Iterator[tuple[Path, CacheEntry | None]]:
        """Every folder under steps/: (path, entry), entry None for temp and trash folders."""
        try:
            children = sorted(self.steps_dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return
        for child in children:
            if child.name == _LOCK or not child.is_dir():
                continue
            if child.name.startswith("."):
                yield child, None
                continue
            yield child, self._entry(child)

    def _entry(self, path: Path) -> CacheEntry:
        try:
            result = json.loads((path / _RESULT).read_text(encoding="utf-8"))
            kind, complete = str(result.get("kind", "?")), True
            created = datetime.fromisoformat(result["created"]).timestamp()
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            complete, created = False, _mtime(path) or 0.0
            try:
                kind = str(json.loads((path / _KEY).read_text(encoding="utf-8"))["kind"])
            except (OSError, ValueError, KeyError, TypeError):
                kind = "?"
        used = _mtime(path / _USED) or _mtime(path / _RESULT) or _mtime(path) or 0.0
        return CacheEntry(path.name, kind, _tree_size(path), _utc(created), _utc(used), complete, path)

    def ls(self) -> list[CacheEntry]:
        """Every entry, complete or partial, most recently used first (temp folders are not listed)."""
        entries = [e for _, e in self._scan() if e is not None]
        return sorted(entries, key=lambda e: e.last_used, reverse=True)

    def size_bytes(self) -> int:
        """Bytes under ``<root>/steps`` (entries, partial entries and stores under way)."""
        return sum(_tree_size(p) for p, _ in self._scan())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        with open(self.steps_dir / _LOCK, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _sweep(self, now: float) -> tuple[list[CacheEntry], int, int]:
        """Remove partial entries and leftover temp folders older than an hour; return the complete entries."""
        removed = freed = 0
        complete = []
        for path, entry in self._scan():
            if entry is not None and entry.complete:
                complete.append(entry)
                continue
            if now - (_mtime(path) or now) > STALE_PARTIAL.total_seconds():
                size = self._discard(path)
                removed, freed = removed + 1, freed + size
        return complete, removed, freed

    def evict_to(self, max_bytes: int) -> tuple[int, int]:
        """Remove least recently used entries until the step cache holds at most ``max_bytes``.

        Also removes partial entries and leftover temp folders older than an hour. Holds
        ``steps/.lock`` meanwhile. Returns (folders removed, bytes freed).
        """
        if not self.steps_dir.is_dir():
            return 0, 0
        with self._locked():
            complete, removed, freed = self._sweep(time.time())
            total = self.size_bytes()
            for entry in sorted(complete, key=lambda e: e.last_used):
                if total <= max_bytes:
                    break
                size = self._discard(entry.path)
                total -= size
                removed, freed = removed + 1, freed + size
        return removed, freed

    def prune(self, older_than: timedelta) -> tuple[int, int]:
        """Remove entries last used more than ``older_than`` ago, and partial entries older than an hour.

        Returns (folders removed, bytes freed), leftover temp folders included.
        """
        if not self.steps_dir.is_dir():
            return 0, 0
        now = time.time()
        with self._locked():
            complete, removed, freed = self._sweep(now)
            for entry in complete:
                if now - entry.last_used.timestamp() > older_than.total_seconds():
                    removed, freed = removed + 1, freed + self._discard(entry.path)
        return removed, freed

    def clear(self) -> tuple[int, int]:
        """Remove every entry (and any store under way, which then returns False). (entries removed, bytes freed)."""
        if not self.steps_dir.is_dir():
            return 0, 0
        removed = freed = 0
        with self._locked():
            for path, entry in self._scan():
                size = self._discard(path)
                removed, freed = removed + (entry is not None), freed + size
        return removed, freed
