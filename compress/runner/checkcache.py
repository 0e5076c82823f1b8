"""Checks of one model against another, answered from the evaluation cache.

A parity or fidelity result of a model against another (its parent, the baseline) is a
function of the two models, the eval data, the check's settings, the backend versions and
the CPU that computed the outputs (int8 kernels round differently with and without VNNI).
It is stored through :meth:`compress.runner.runcache.RunCache.eval_get` / ``eval_put``
(keyed by the checked model's hash, the eval data's fingerprint and the versions) with a
spec naming the check, the other model's hash, the settings and the CPU, so a rerun of an
unchanged recipe neither runs its torch models nor compares their outputs again. A result
that does not survive JSON unchanged (a NaN) is never stored.

Models are hashed by :func:`compress.runner.stepkey.model_hash` (a torch graph module as its
saved and reloaded copy).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any



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
