"""The key of a cached step: what a step's output was computed from, hashed.

A step's output is reused only when everything it was computed from is the same, so the
key (:class:`StepKey`) is a sha256 over a canonical JSON of: the step kind and its config
(``model_dump(mode="json")``), the *contents* of the files the config references, the
input artifact's hash (:func:`hash_path` of a file, :func:`hash_state_dict` of a live
module), a fingerprint of the data (:func:`fingerprint_arrays`), the seed, the target
architecture and the CPU flags that chose defaults, and the toolkit and backend versions.
``key.json`` beside each entry shows those inputs, so :func:`diff_keys` can say why two
keys differ. The store is :mod:`compress.runner.stepcache`.

This module imports only the kernel's file hashing of the project, and nothing heavier than
numpy; torch is imported only inside :func:`hash_state_dict`.

In :func:`torch_model_hash` a torch graph module (a pt2e QAT model) is hashed as its saved and reloaded copy: reading it
back changes its state dict (the tensor constants its graph reads become buffers, and more),
so otherwise a freshly trained model and the same model read back from the step cache in the
next run would hash differently, and every check of it would be a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.fileio import sha256_file
from compress.core.types import Artifact

KEY_SCHEMA = 1
ARCHES = ("x86", "arm")


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


def _graph_constants(module: Any) -> dict[str, Any]:
    """Plain tensor attributes (not parameters or buffers) a graph module's ``get_attr`` nodes read."""
    graph = getattr(module, "graph", None)
    nodes = getattr(graph, "nodes", None)
    if nodes is None:
        return {}
    import torch

    out = {}
    for node in nodes:
        target = node.target if node.op == "get_attr" else None
        if not isinstance(target, str) or "." in target or target in module._buffers or target in module._parameters:
            continue
        value = module.__dict__.get(target)
        if isinstance(value, torch.Tensor):
            out[target] = value
    return out


def _state_hash(module: Any) -> str:
    """:func:`hash_state_dict`, counting the plain tensor constants a graph reads as buffers."""
    constants = _graph_constants(module)
    if not constants:
        return hash_state_dict(module)
    view = object.__new__(type(module))
    view.__dict__.update(module.__dict__)
    view.__dict__["_buffers"] = {**module._buffers, **constants}
    for name in constants:
        view.__dict__.pop(name, None)
    return hash_state_dict(view)


# state hash of a graph module -> the hash of its saved and reloaded copy (computing it saves the model)
_RELOADED: dict[str, str] = {}


def torch_model_hash(module: Any) -> str:
    """The hash of a torch model as the step cache's copy of it will hash.

    An ordinary module: :func:`hash_state_dict`. A graph module (a pt2e QAT model) is saved
    and read back as :func:`compress.runner.runcodec.save_module` and the cache do (once per
    state), because reading it back changes its state dict (constants become buffers, among
    others), so a model trained in this run and the same model from the cache in the next
    share their evaluations. The module itself is not changed.
    """
    state = _state_hash(module)
    graph = getattr(module, "graph", None)
    if graph is None or not hasattr(graph, "nodes"):
        return state
    if state not in _RELOADED:
        import tempfile
        from pathlib import Path

        import torch

        from compress.runner.runcodec import save_module

        try:
            with tempfile.TemporaryDirectory(prefix="edgepack-hash-") as tmp:
                save_module(module, Path(tmp) / "module.pt")
                _RELOADED[state] = _state_hash(torch.load(Path(tmp) / "module.pt", weights_only=False))
        except Exception:  # noqa: BLE001  a model that does not save is not cached by the step cache either
            _RELOADED[state] = state
    return _RELOADED[state]


def model_hash(thing: Any) -> str:
    """sha256 of a file artifact's file, or of a torch model's state (an Artifact or a module).

    Raises:
        TypeError, OSError, RuntimeError, AttributeError: It cannot be hashed (then it is not cached).
    """
    if isinstance(thing, Artifact) and thing.format != "torch" and thing.path is not None:
        return hash_path(thing.path)
    if isinstance(thing, Artifact) and thing.content_hash is not None:
        return thing.content_hash  # a model known by its hash and not loaded (it cannot have changed)
    return torch_model_hash(thing.module if isinstance(thing, Artifact) else thing)



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
