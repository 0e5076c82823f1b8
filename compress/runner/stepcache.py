"""A content-addressed cache of step outputs, and of evaluation results.

A step's output is reused only when everything it was computed from is the same, so the
key (:class:`StepKey`) is a sha256 over a canonical JSON of: the step kind and its config
(``model_dump(mode="json")``), the *contents* of the files the config references, the
input artifact's hash (:func:`hash_path` of a file, :func:`hash_state_dict` of a live
module), a fingerprint of the data (:func:`fingerprint_arrays`), the seed, the target
architecture and the CPU flags that chose defaults, and the toolkit and backend versions.
``key.json`` beside each entry shows those inputs, so :func:`diff_keys` can say why two
keys differ.

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
import hashlib
import json
import os
import pickle
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.fileio import fsync_path, sha256_file

KEY_SCHEMA = 1
RESULT_SCHEMA = 1
ARCHES = ("x86", "arm")
DEFAULT_MAX_BYTES = 10 * 1024**3
STALE_PARTIAL = timedelta(hours=1)

_RESULT = "result.json"
_KEY = "key.json"
_USED = "used"
_FILES = "files"
_LOCK = ".lock"
_TMP = ".tmp-"
_TRASH = ".trash-"


# ---------------------------------------------------------------- hashing


def _canonical(obj: Any) -> str:
    """One JSON text per value: sorted keys, no whitespace, no NaN (pydantic's json mode gives null)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _update(h: Any, data: str | bytes) -> None:
    # length-prefixed, so ("ab", "c") and ("a", "bc") hash differently
    raw = data.encode() if isinstance(data, str) else data
    h.update(len(raw).to_bytes(8, "little"))
    h.update(raw)


def hash_path(path: str | Path) -> str:
    """sha256 of a file's bytes (as ``sha256sum`` prints it), or of a directory tree.

    A directory hashes every file under it by its relative POSIX path and its bytes, in
    sorted order; symlinked files count by their contents, symlinked folders by their target.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    _update(h, "dir")
    for top, dirs, names in os.walk(path):
        dirs.sort()
        rel_top = Path(top).relative_to(path)
        for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(top, d))]):
            full = Path(top) / name
            _update(h, (rel_top / name).as_posix())
            _update(h, f"link:{os.readlink(full)}" if full.is_dir() else sha256_file(full))
    return h.hexdigest()


def fingerprint_arrays(*arrays: Any) -> str:
    """sha256 over each array's dtype, shape and bytes, in order (a data fingerprint for StepKey).

    Raises:
        TypeError: an object array (its bytes are pointers, not data).
    """
    h = hashlib.sha256()
    _update(h, f"arrays:{len(arrays)}")
    for arr in arrays:
        a = np.ascontiguousarray(np.asarray(arr))
        if a.dtype.hasobject:
            raise TypeError("fingerprint_arrays: object arrays cannot be fingerprinted; convert to a numeric dtype")
        _update(h, f"{a.dtype.str}|{a.shape}")
        _update(h, a.tobytes())
    return h.hexdigest()


def hash_state_dict(module: Any) -> str:
    """sha256 of a torch module's weights: its class, and every state_dict entry's name, dtype, shape and bytes.

    Entries go in sorted name order. Quantized tensors count their integer values, scales
    and zero points; tensor subclasses (torchao's quantized weights) their inner tensors and
    metadata (``__tensor_flatten__``); other entries (extra state) their pickle.

    Raises:
        TypeError: an entry it cannot hash faithfully (sparse, meta, an unflattenable
            subclass, an unpicklable extra state): run that step uncached.
    """
    import torch

    h = hashlib.sha256()
    cls = type(module)
    _update(h, f"{cls.__module__}.{cls.__qualname__}")
    state = module.state_dict()
    for name in sorted(state):
        _update(h, name)
        try:
            _update_entry(h, state[name], torch)
        except Exception as exc:
            raise TypeError(f"hash_state_dict: cannot hash state_dict entry {name!r} ({exc}); "
                            "run this step uncached") from exc
    return h.hexdigest()


def _update_entry(h: Any, value: Any, torch: Any) -> None:
    if not isinstance(value, torch.Tensor):
        _update(h, "object")
        _update(h, pickle.dumps(value, protocol=4))
        return
    t = value.detach()
    _update(h, f"{type(t).__qualname__}|{t.dtype}|{tuple(t.shape)}")
    if type(t) is not torch.Tensor:
        inner, meta = t.__tensor_flatten__()  # AttributeError for a subclass that cannot say what it holds
        _update(h, repr(meta))
        for attr in inner:
            _update_entry(h, getattr(t, attr), torch)
        return
    if t.layout != torch.strided or t.is_meta:
        raise TypeError("meta tensor" if t.is_meta else f"layout {t.layout}")
    parts = [t]
    if t.is_quantized:
        if t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            _update(h, f"{t.qscheme()}|{t.q_scale()!r}|{t.q_zero_point()}")
            parts = [t.int_repr()]
        else:
            _update(h, f"{t.qscheme()}|axis={t.q_per_channel_axis()}")
            parts = [t.int_repr(), t.q_per_channel_scales(), t.q_per_channel_zero_points()]
    for p in parts:
        _update(h, p.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


# ---------------------------------------------------------------- keys


@dataclass(frozen=True, kw_only=True)
class StepKey:
    """Everything a step's output depends on; two equal keys may share one output.

    Build one with :meth:`build` (it hashes the referenced files) or directly with the
    file hashes. Values are normalised on construction (the config is copied through JSON,
    CPU flags sorted and de-duplicated), so the instance can be treated as immutable.

    Args:
        kind: The step kind, e.g. ``prune``.
        config: The step config as ``model_dump(mode="json")`` gives it.
        input_hash: sha256 of the input artifact file (:func:`hash_path`), or
            :func:`hash_state_dict` of a live module; empty for a step with no input.
        arch: Target architecture, ``x86`` or ``arm``.
        versions: Toolkit and backend versions, name -> version.
        data_fingerprint: :func:`fingerprint_arrays` of the data the step reads, if any.
        seed: The seed the step runs with, if any.
        cpu_flags: The CPU flags that chose defaults (e.g. ``avx512_vnni``).
        files: Contents of the files the config references, label -> :func:`hash_path`.

    Raises:
        ValueError: an unknown arch or an empty kind.
        TypeError: a config that is not JSON-able, a seed that is not an int, flags given as one string.
    """

    kind: str
    config: Mapping[str, Any]
    input_hash: str
    arch: str
    versions: Mapping[str, str]
    data_fingerprint: str = ""
    seed: int | None = None
    cpu_flags: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind or not isinstance(self.kind, str):
            raise ValueError(f"StepKey.kind must be a non-empty string (got {self.kind!r})")
        if self.arch not in ARCHES:
            raise ValueError(f"StepKey.arch must be one of {', '.join(ARCHES)} (got {self.arch!r})")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise TypeError(f"StepKey.seed must be an int or None (got {self.seed!r})")
        if isinstance(self.cpu_flags, str):
            raise TypeError("StepKey.cpu_flags must be a list of flags, not one string")
        try:
            config = json.loads(_canonical(dict(self.config)))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"StepKey.config must be JSON-able (pass config.model_dump(mode='json')): {exc}") from exc
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "cpu_flags", tuple(sorted({str(f) for f in self.cpu_flags})))
        object.__setattr__(self, "versions", {str(k): str(v) for k, v in sorted(self.versions.items())})
        object.__setattr__(self, "files", {str(k): str(v) for k, v in sorted(self.files.items())})

    @classmethod
    def build(cls, kind: str, config: Mapping[str, Any], *, input_hash: str, arch: str,
              versions: Mapping[str, str], files: Iterable[str | Path] = (), data_fingerprint: str = "",
              seed: int | None = None, cpu_flags: Iterable[str] = ()) -> StepKey:
        """A key whose ``files`` hashes the contents of ``files``, each labelled by its path as given.

        Pass paths as the config spells them (e.g. recipe-relative), so the key does not
        depend on where the checkout lives. A directory is hashed recursively.

        Raises:
            FileNotFoundError: a referenced file is missing.
        """
        return cls(kind=kind, config=config, input_hash=input_hash, arch=arch, versions=versions,
                   files={str(p): hash_path(p) for p in files}, data_fingerprint=data_fingerprint,
                   seed=seed, cpu_flags=tuple(cpu_flags))

    def describe(self) -> dict[str, Any]:
        """The JSON-able inputs of the key (stored as ``key.json``); the digest hashes exactly this."""
        return json.loads(_canonical({
            "schema": KEY_SCHEMA, "kind": self.kind, "config": self.config, "files": self.files,
            "input_hash": self.input_hash, "data_fingerprint": self.data_fingerprint, "seed": self.seed,
            "arch": self.arch, "cpu_flags": list(self.cpu_flags), "versions": self.versions,
        }))

    @property
    def digest(self) -> str:
        """sha256 hex of the canonical JSON of :meth:`describe`."""
        return hashlib.sha256(_canonical(self.describe()).encode()).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()
"""Stands for a value one side of :func:`diff_keys` does not have."""


def diff_keys(a: StepKey | Mapping[str, Any], b: StepKey | Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What differs between two keys: dotted path -> (value in a, value in b).

    Either side may be a StepKey or a ``key.json`` dict. Nested dicts (config, versions,
    files) are compared entry by entry, e.g. ``config.ratio`` or ``versions.torch``; a key
    present on one side only shows :data:`ABSENT` on the other. Values are compared as
    canonical JSON, so ``1`` and ``1.0`` differ, as they do in the digest. Empty when equal.
    """
    da = a.describe() if isinstance(a, StepKey) else dict(a)
    db = b.describe() if isinstance(b, StepKey) else dict(b)
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: Any, y: Any, path: str) -> None:
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in list(x) + sorted((k for k in y if k not in x), key=str):
                walk(x.get(k, ABSENT), y.get(k, ABSENT), f"{path}.{k}" if path else str(k))
        elif x is ABSENT or y is ABSENT or _canonical(x) != _canonical(y):
            out[path] = (x, y)

    walk(da, db, "")
    return out


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


# ---------------------------------------------------------------- step cache


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


# ---------------------------------------------------------------- evaluation cache


class EvalCache:
    """Small JSON evaluation results (accuracy, agreement, SQNR...) under ``<root>/evals/<digest>.json``.

    Keyed by the artifact's hash, the eval data's fingerprint, the metric spec and an
    optional ``environment`` (runtime versions, target arch: what else changes the numbers).
    Never store measured latencies here (see the module docstring). Like the step cache,
    :meth:`put` never raises and a damaged file is a miss.

    Args:
        root: Cache root; default :func:`cache_root`.
        enabled: When False, gets miss and puts do nothing.
    """

    def __init__(self, root: str | Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.enabled = enabled

    @property
    def evals_dir(self) -> Path:
        return self.root / "evals"

    def _locate(self, artifact_hash: str, data_fingerprint: str, metric_spec: str,
                environment: Mapping[str, str] | None) -> tuple[Path, dict[str, Any]]:
        key = {"schema": KEY_SCHEMA, "artifact_hash": artifact_hash, "data_fingerprint": data_fingerprint,
               "metric_spec": metric_spec, "environment": {str(k): str(v) for k, v in (environment or {}).items()}}
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()
        return self.evals_dir / f"{digest}.json", json.loads(_canonical(key))

    def get(self, artifact_hash: str, data_fingerprint: str, metric_spec: str,
            environment: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        """The stored result, or None (disabled, missing, or damaged: then removed)."""
        if not self.enabled:
            return None
        path, key = self._locate(artifact_hash, data_fingerprint, metric_spec, environment)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored["key"] == key and isinstance(stored["result"], dict):
                return stored["result"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            pass
        path.unlink(missing_ok=True)
        return None

    def put(self, artifact_hash: str, data_fingerprint: str, metric_spec: str, result: Mapping[str, Any],
            environment: Mapping[str, str] | None = None) -> bool:
        """Store ``result`` (JSON-able) atomically. False, never an exception, when it cannot be stored."""
        if not self.enabled:
            return False
        try:
            path, key = self._locate(artifact_hash, data_fingerprint, metric_spec, environment)
            self.evals_dir.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(path, {"key": key, "result": dict(result),
                                      "created": datetime.now(UTC).isoformat(timespec="seconds")})
        except Exception:
            return False
        return True

    def clear(self) -> int:
        """Remove every stored result; returns how many."""
        paths = list(self.evals_dir.glob("*.json")) if self.evals_dir.is_dir() else []
        for path in paths:
            path.unlink(missing_ok=True)
        return len(paths)
