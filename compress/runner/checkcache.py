"""Checks of one model against another, answered from the evaluation cache.

A parity or fidelity result of a model against another (its parent, the baseline) is a
function of the two models, the eval data, the check's settings, the backend versions and
the CPU that computed the outputs (int8 kernels round differently with and without VNNI).
It is stored through :meth:`compress.runner.runcache.RunCache.eval_get` / ``eval_put``
(keyed by the checked model's hash, the eval data's fingerprint and the versions) with a
spec naming the check, the other model's hash, the settings and the CPU, so a rerun of an
unchanged recipe neither runs its torch models nor compares their outputs again. A result
that does not survive JSON unchanged (a NaN) is never stored.

A torch graph module (a pt2e QAT model) is hashed as its saved and reloaded copy: reading it
back changes its state dict (the tensor constants its graph reads become buffers, and more),
so otherwise a freshly trained model and the same model read back from the step cache in the
next run would hash differently, and every check of it would be a miss.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from compress.core.types import Artifact
from compress.runner.stepkey import hash_path, hash_state_dict


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
    return torch_model_hash(thing.module if isinstance(thing, Artifact) else thing)


class CheckCache:
    """Parity and fidelity results of the run, by both models' hashes.

    Args:
        cache: The run's :class:`compress.runner.runcache.RunCache` (None or disabled: nothing cached).
    """

    def __init__(self, cache: Any) -> None:
        self.cache = cache if cache is not None and cache.enabled else None
        self._cpu: str | None = None

    def _spec(self, check: str, other: str, settings: dict[str, Any]) -> str:
        if self._cpu is None:
            self._cpu = hashlib.sha256("|".join(self.cache.cpu_flags()).encode()).hexdigest()[:16]
        text = json.dumps(settings, sort_keys=True, default=str)
        return f"check={check}|against={other}|cpu={self._cpu}|settings={hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def get(self, check: str, ids: tuple[str | None, str | None], settings: dict[str, Any], cls: Any,
            reference: str) -> Any:
        """The stored result (a ``cls`` pydantic model, its ``reference`` named as in this run) or None."""
        if self.cache is None or None in ids:
            return None
        stored = self.cache.eval_get(ids[0], self._spec(check, ids[1], settings))
        if stored is None:
            return None
        try:
            return cls.model_validate({**stored, "reference": reference})
        except ValueError:  # an entry an older schema wrote: measured again
            return None

    def put(self, check: str, ids: tuple[str | None, str | None], settings: dict[str, Any], result: Any) -> None:
        """Store a result, unless it does not read back the same (a NaN becomes null in JSON)."""
        if self.cache is None or None in ids:
            return
        dumped = result.model_dump(mode="json")
        try:
            if type(result).model_validate(dumped) != result:
                return
        except ValueError:
            return
        self.cache.eval_put(ids[0], self._spec(check, ids[1], settings), dumped)
