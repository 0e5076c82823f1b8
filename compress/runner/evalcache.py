"""Small JSON evaluation results (accuracy, agreement, SQNR...), keyed by what they were computed from.

Stored under ``<cache root>/evals/<digest>.json`` beside the step cache
(:mod:`compress.runner.stepcache`). Measured latencies are never stored here: a timing belongs
to the moment and the machine it was taken on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


from compress.runner.cachefiles import _write_json_atomic, cache_root
from compress.runner.stepkey import KEY_SCHEMA, _canonical


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
