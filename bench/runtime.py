"""The Runtime abstraction: one interface over onnxruntime and LiteRT.

The implementation lives in :mod:`bench.agent` so that the very same code runs in-process
here, in a fresh benchmark process, and on a remote board.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.agent import (  # noqa: F401  (re-exported)
    ModelInputs,
    OrtSession,
    TfliteSession,
    num_samples,
    open_session,
    take_samples,
)


def open_model(path: Path, threads: int = 1) -> Any:
    """Open an ONNX or TFLite file; raises a clear error when the runtime is missing."""
    from compress.core.errors import MissingDependencyError

    try:
        return open_session(str(path), threads)
    except ImportError as e:
        pkg = "ai-edge-litert" if str(path).endswith(".tflite") else "onnxruntime"
        raise MissingDependencyError(pkg, f"running {Path(path).name}") from e


def predict(session: Any, x: list[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    """All outputs of a session over the inputs, in batches along each input's batch axis.

    Fixed inputs (batch axis ``None`` in a :class:`~bench.agent.ModelInputs`) are fed whole
    to every call; when one carries a batch of one (a state ``[2, 1, 128]``), the session
    runs sample by sample (see :func:`bench.agent.batch_tied`). Outputs are joined on axis 0.
    """
    n = num_samples(x)
    outs = [session.run(take_samples(x, slice(i, i + batch_size))) for i in range(0, n, batch_size)]
    return [np.concatenate([o[k] for o in outs]) if np.ndim(outs[0][k]) else outs[0][k] for k in range(len(outs[0]))]


def feeds_of(x: list[np.ndarray], names: list[str], batch: int | None, n: int, step: int = 8) -> list[dict[str, np.ndarray]]:
    """Input dicts of the first ``n`` samples, in batches the model accepts.

    Samples are taken along each input's batch axis (a :class:`bench.agent.ModelInputs`
    carries them); fixed inputs (a scalar, a recurrent state) are fed whole to every batch.
    A model with a fixed batch size gets its last batch padded by repeating the last sample.
    """
    from bench.agent import batch_axes_of, num_samples, take_samples

    axes = batch_axes_of(x)
    n = min(n, num_samples(x)) if len(x) else 1
    size = batch or step
    out = []
    for i in range(0, n, size):
        chunk = list(take_samples(x, slice(i, min(i + size, n)))) if len(x) else []
        if batch:
            for k, (a, ax) in enumerate(zip(chunk, axes)):
                have = np.shape(a)[ax] if ax is not None else batch
                if have < batch:
                    last = np.take(a, [have - 1], axis=ax)
                    chunk[k] = np.concatenate([a, np.repeat(last, batch - have, axis=ax)], axis=ax)
        out.append(dict(zip(names, chunk)))
    return out
