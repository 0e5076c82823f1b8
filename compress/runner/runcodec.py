"""Step results to files and JSON and back, for the step cache.

A step's result (the artifact it made, its details and advisories, the extra artifacts it
offered, the torch module) becomes JSON with run-folder paths made relative (the files are
collected for the cache) and a ``torch.save`` of the module; decoding moves the paths into
the new run folder. A value the codec cannot store raises :class:`NotCacheable` (the step is
then not cached). Used by :mod:`compress.runner.runcache`.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.types import Artifact


def _no_guards() -> Any:
    import torch

    class NoGuards(torch.nn.Module):
        """Stands in for torch.export's input-guard function in a cached graph module."""

        def forward(self, *args: Any, **kwargs: Any) -> None:
            return None

    NoGuards.__module__, NoGuards.__qualname__ = __name__, "NoGuards"
    return NoGuards


def save_module(module: Any, path: Path) -> None:
    """``torch.save`` of a whole module.

    An exported graph module (a pt2e QAT model) holds what does not pickle: ``train``/``eval``
    overrides that forbid switching modes, and ``_guards_fn``, a check of the input shapes
    compiled by torch.export. They are left out of the saved copy (the cached model is used
    in eval mode, on inputs that passed the run's checks) and everything else is saved by
    value with cloudpickle (the graph's code refers to functions defined inside torch).
    """
    import pickle

    import torch

    try:
        torch.save(module, path)
        return
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    import cloudpickle

    removed: list[tuple[Any, str, Any]] = []
    swapped: list[tuple[Any, str, Any]] = []
    try:
        for m in module.modules():
            for attr in ("train", "eval"):
                if attr in m.__dict__:
                    removed.append((m, attr, m.__dict__.pop(attr)))
            if m.__dict__.get("_tracer_cls") is not None:
                # re-made on load with no arguments; export's module-stack tracer needs some
                removed.append((m, "_tracer_cls", m.__dict__["_tracer_cls"]))
                m.__dict__["_tracer_cls"] = None
            guards = m._modules.get("_guards_fn")
            if guards is not None:
                swapped.append((m, "_guards_fn", guards))
                m._modules["_guards_fn"] = _guards_class()()
        torch.save(module, path, pickle_module=cloudpickle)
    finally:
        for m, attr, v in removed:
            m.__dict__[attr] = v
        for m, name, v in swapped:
            m._modules[name] = v


def _guards_class() -> Any:
    """The ``NoGuards`` class, made once (imports torch)."""
    cls = globals().get("NoGuards")
    if cls is None:
        cls = globals()["NoGuards"] = _no_guards()
    return cls


def __getattr__(name: str) -> Any:
    """``NoGuards`` is made on first use (a pickled cached model names it): importing this module
    does not import torch, so a run whose steps are all cached never does."""
    if name == "NoGuards":
        try:
            return _guards_class()
        except ImportError:  # no torch: nothing to cache a module of
            return None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class NotCacheable(Exception):
    """A step's result that the cache cannot store (a live object that is not data)."""


@dataclass
class _Codec:
    """JSON encoding of step results with run-folder paths made relative (and collected)."""

    run_dir: Path
    step_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)  # id(artifact) -> its number: one object stays one

    def path(self, p: Path) -> Any:
        p = Path(p)
        for prefix, base in (("step", self.step_dir), ("run", self.run_dir)):
            try:
                rel = p.resolve().relative_to(base.resolve())
            except ValueError:
                continue
            name = f"{prefix}/{rel.as_posix()}"
            if p.is_file():
                self.files[name] = p
            return {"__path__": name}
        return {"__abspath__": str(p)}

    def encode(self, obj: Any) -> Any:
        from pydantic import BaseModel

        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, Path):
            return self.path(obj)
        if isinstance(obj, Artifact):
            if id(obj) in self.seen:
                return {"__artifact_ref__": self.seen[id(obj)]}
            self.seen[id(obj)] = len(self.seen)
            return {"__artifact__": {"id": self.seen[id(obj)],
                "name": obj.name, "format": obj.format, "path": self.encode(obj.path), "parent": obj.parent,
                "step": obj.step, "config_hash": obj.config_hash, "precision": obj.precision,
                "metadata": self.encode(obj.metadata), "module": obj.holds_module}}
        if isinstance(obj, BaseModel):
            cls = type(obj)
            return {"__model__": f"{cls.__module__}:{cls.__qualname__}", "data": obj.model_dump(mode="json")}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                    "data": {f.name: self.encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
        if isinstance(obj, np.ndarray):
            return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, dict):
            if not all(isinstance(k, str) for k in obj):
                raise NotCacheable(f"a mapping with non-text keys ({type(next(iter(obj))).__name__})")
            return {"__dict__": {k: self.encode(v) for k, v in obj.items()}}
        if isinstance(obj, (list, tuple)):
            return [self.encode(v) for v in obj]
        raise NotCacheable(f"a {type(obj).__name__} in the step's result")


@dataclass
class _Decoder:
    """Step results back from JSON, paths in the new run folder.

    Args:
        load_module: Loads the step's torch module (once, on first use; shared by every artifact
            that held it); None when the entry has none.
        module_hash: That module's hash (:func:`compress.runner.stepkey.model_hash`), when stored.
    """

    run_dir: Path
    step_dir: Path
    load_module: Any = None
    module_hash: str | None = None
    made: dict[int, Artifact] = field(default_factory=dict)

    def decode(self, obj: Any) -> Any:
        if isinstance(obj, list):
            return [self.decode(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if "__dict__" in obj:
            return {k: self.decode(v) for k, v in obj["__dict__"].items()}
        if "__path__" in obj:
            prefix, _, rel = obj["__path__"].partition("/")
            return (self.step_dir if prefix == "step" else self.run_dir) / rel
        if "__abspath__" in obj:
            return Path(obj["__abspath__"])
        if "__artifact_ref__" in obj:
            return self.made[obj["__artifact_ref__"]]
        if "__artifact__" in obj:
            a = obj["__artifact__"]
            lazy = a["module"] and self.load_module is not None
            art = Artifact(name=a["name"], format=a["format"], path=self.decode(a["path"]), parent=a["parent"],
                           step=a["step"], config_hash=a["config_hash"], precision=a["precision"],
                           load_module=self.load_module if lazy else None,
                           content_hash=self.module_hash if lazy else None)
            self.made[a["id"]] = art
            art.metadata = self.decode(a["metadata"])
            return art
        if "__model__" in obj:
            return _resolve(obj["__model__"]).model_validate(obj["data"])
        if "__dataclass__" in obj:
            return _resolve(obj["__dataclass__"])(**{k: self.decode(v) for k, v in obj["data"].items()})
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        raise ValueError(f"unknown cached value {sorted(obj)[:3]}")


def _resolve(ref: str) -> Any:
    mod, _, qual = ref.partition(":")
    thing: Any = importlib.import_module(mod)
    for part in qual.split("."):
        thing = getattr(thing, part)
    return thing
