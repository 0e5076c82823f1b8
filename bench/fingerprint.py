"""Input fingerprints: what the calibration/eval data and the model's outputs on it looked like.

A fingerprint (``fingerprint.json`` in a bundle) holds, per model input, summary statistics and
fixed-bin histograms of a few *features*, and per model output its class prior and a histogram
of its confidence. Everything a drift check needs (PSI, a binned KS statistic, see
:mod:`bench.drift`) can be recomputed from the JSON alone; ``export/drift_reference.py`` does
so with numpy only. The definitions below are the contract both follow (docs/drift.md).

Features of a float input (the batch axis moved first; fixed inputs are skipped):

- the channel axis is 1 (NCHW, ``[N, C, L]``, a ``[N, F]`` table) or the last axis when the
  layout is NHWC (4-d inputs only); a ``[N]`` input is one feature;
- ``channel`` features: every value of one channel, pooled over the spatial axes (a table's
  column is one value per sample);
- ``cell`` features (inputs with spatial axes only): the per-sample mean of one channel over one
  cell of a grid. When ``C * prod(spatial)`` is at most :data:`PER_ELEMENT_LIMIT` every element
  is its own cell (an 8x8 digit: 64 pixels); else each spatial axis of size S is cut into
  ``g = min(S, GRID)`` segments at ``floor(j * S / g)``, ``j = 0..g`` (a 224x224x3 image:
  3 x 4 x 4 cells), which keeps the JSON small (about 36 KB there).

A feature's histogram has :data:`BINS` equal-width bins between robust bounds of the
reference (its 0.5 % and 99.5 % quantiles; min and max when those coincide; a width of
``max(1e-6, 1e-6 * |lo|)`` for a constant feature), plus an underflow and an overflow bin.
Bucket ``0`` holds ``x < e[0]``, bucket ``k`` (1..BINS) holds ``e[k-1] <= x < e[k]`` (the last
inner bin also holds ``x == e[BINS]``), bucket ``BINS + 1`` holds ``x > e[BINS]``. Values are
compared as float64.

Integer (and bool) inputs are tokens, unless uint8 or 4-d (pixel values, fingerprinted as
floats): a vocabulary sketch of the :data:`TOP_K` most frequent
values in the reference (ties to the smaller value) with their counts, and an ``other`` bucket.

Outputs: a classification output ``[N, K]`` (K >= 2) gives its class prior (counts of the
argmax, ties to the first class) and a histogram of its confidence on :data:`SCORE_EDGES`:
the max softmax probability ``1 / sum(exp(x - max(x)))`` when it holds logits, the max value
when it holds probabilities. Any other output is fingerprinted as one pooled ``values`` feature.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT = "edgepack-fingerprint"
FORMAT_VERSION = 1
BINS = 10
ROBUST_QUANTILES = (0.005, 0.995)
QUANTILES = (1, 5, 25, 50, 75, 95, 99)
PER_ELEMENT_LIMIT = 256
GRID = 4
TOP_K = 64
SCORE_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
PSI_EPSILON = 1e-4
"""Floor of a bucket's share in PSI (an empty bucket would make ln(a/e) infinite)."""
DEFAULT_THRESHOLDS = {"psi_moderate": 0.1, "psi_drift": 0.25, "ks_alpha": 0.01}

RULES = {
    "channel_axis": "1 (NCHW, [N, C, L], [N, F] tables); the last axis for 4-d NHWC inputs",
    "cells": f"every element when C * prod(spatial) <= {PER_ELEMENT_LIMIT}; else min(S, {GRID}) segments per "
             "spatial axis at floor(j * S / g); a cell's value is the per-sample float64 mean over it",
    "bins": f"{BINS} equal-width bins between the reference's {ROBUST_QUANTILES[0]:g} and {ROBUST_QUANTILES[1]:g} "
            "quantiles, plus underflow (x < e[0]) and overflow (x > e[-1]); inner bin k holds e[k-1] <= x < e[k], "
            "the last inner bin also x == e[-1]; compared as float64",
    "tokens": f"integer inputs (not uint8, not 4-d): the {TOP_K} most frequent values of the reference "
              "(ties: smaller value) and an 'other' bucket",
    "score": "max softmax probability 1 / sum(exp(x - max(x))) of logits, or the max value of probabilities; "
             "class = argmax (ties: first)",
    "psi_epsilon": PSI_EPSILON,
}


def bucket_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bucket (0 = underflow .. len(edges) = overflow) of each value, as the module docstring defines."""
    v = np.asarray(values, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    inner = len(e) - 1
    idx = np.minimum(np.searchsorted(e, v, side="right"), inner)
    idx[v < e[0]] = 0
    idx[v > e[-1]] = inner + 1
    return idx


def bucket_counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts per bucket (underflow, the inner bins, overflow)."""
    return np.bincount(bucket_index(values, edges), minlength=len(edges) + 1).astype(int).tolist()


def token_counts(values: np.ndarray, tokens: list[int]) -> list[int]:
    """Counts of each sketched token, then of every other value."""
    v = np.asarray(values).reshape(-1).astype(np.int64)
    known = np.asarray(tokens, dtype=np.int64)
    counts = [int(np.count_nonzero(v == t)) for t in known]
    return counts + [int(v.size - sum(counts))]


def robust_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Equal-width bin edges between the values' robust bounds (see the module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = (float(q) for q in np.quantile(v, ROBUST_QUANTILES))
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
    if not hi > lo:
        hi = lo + max(1e-6, 1e-6 * abs(lo))
    return [float(e) for e in np.linspace(lo, hi, bins + 1)]


def _summary(v: np.ndarray) -> dict[str, Any]:
    qs = np.quantile(v, [q / 100 for q in QUANTILES])
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "quantiles": {str(q): float(x) for q, x in zip(QUANTILES, qs)}}


def numeric_feature(name: str, kind: str, values: np.ndarray, **where: Any) -> dict[str, Any]:
    """One float feature's summary and histogram."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    edges = robust_edges(v)
    return {"name": name, "kind": kind, **where, **_summary(v), "edges": edges, "counts": bucket_counts(v, edges)}


def channel_axis(ndim: int, layout: str | None) -> int | None:
    """The channel axis of a batch-first array (None for a ``[N]`` input)."""
    if ndim < 2:
        return None
    return ndim - 1 if ndim == 4 and layout == "NHWC" else 1


def grid_of(channels: int, spatial: tuple[int, ...]) -> list[int]:
    """Segments per spatial axis: every element when the input is small, else at most GRID."""
    if channels * int(np.prod(spatial, dtype=np.int64)) <= PER_ELEMENT_LIMIT:
        return list(spatial)
    return [min(s, GRID) for s in spatial]


def _bounds(size: int, segments: int) -> list[tuple[int, int]]:
    cuts = [(j * size) // segments for j in range(segments + 1)]
    return [(cuts[j], cuts[j + 1]) for j in range(segments)]


def float_features(x: np.ndarray, layout: str | None) -> tuple[list[tuple[dict[str, Any], np.ndarray]], dict[str, Any]]:
    """The features of a batch-first float array: (description, values) pairs, and the input's layout facts.

    The values of a ``channel`` feature are pooled over the spatial axes; those of a ``cell``
    feature are one per-sample mean per sample.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        return [({"name": "value", "kind": "channel", "channel": 0}, a)], {"channel_axis": None, "grid": None}
    ax = channel_axis(a.ndim, layout)
    a = np.moveaxis(a, ax, 1)
    channels, spatial = a.shape[1], a.shape[2:]
    out: list[tuple[dict[str, Any], np.ndarray]] = []
    word = "feature" if not spatial else "channel"
    for c in range(channels):
        out.append(({"name": f"{word} {c}", "kind": "channel", "channel": c}, a[:, c].reshape(-1)))
    if not spatial:
        return out, {"channel_axis": ax, "grid": None}
    grid = grid_of(channels, spatial)
    cells = [_bounds(s, g) for s, g in zip(spatial, grid)]
    for c in range(channels):
        for index in np.ndindex(*grid):
            region = [list(cells[d][i]) for d, i in enumerate(index)]
            block = a[(slice(None), c) + tuple(slice(r0, r1) for r0, r1 in region)]
            values = block.reshape(len(a), -1).mean(axis=1)
            name = f"cell c{c} [{','.join(str(i) for i in index)}]"
            out.append(({"name": name, "kind": "cell", "channel": c, "cell": list(index), "region": region}, values))
    return out, {"channel_axis": ax, "grid": grid}


def _tokens_feature(name: str, values: np.ndarray) -> dict[str, Any]:
    v = np.asarray(values).reshape(-1).astype(np.int64)
    ids, counts = np.unique(v, return_counts=True)
    order = np.lexsort((ids, -counts))[:TOP_K]  # most frequent first, ties to the smaller value
    tokens = [int(t) for t in ids[order]]
    return {"name": name, "kind": "tokens", "n": int(v.size), "tokens": tokens, "counts": token_counts(v, tokens)}


def _batch_first(a: np.ndarray, batch_axis: int | None) -> np.ndarray | None:
    if batch_axis is None:
        return None
    return np.moveaxis(np.asarray(a), batch_axis, 0)


def is_tokens(x: np.ndarray) -> bool:
    """Integer and bool inputs are tokens, except images: uint8 arrays and 4-d arrays are pixel values."""
    return x.dtype.kind in "biu" and x.dtype != np.uint8 and x.ndim != 4


def input_fingerprint(name: str, a: np.ndarray, batch_axis: int | None, layout: str | None) -> dict[str, Any]:
    """The fingerprint of one input's reference data (samples along ``batch_axis``)."""
    x = _batch_first(a, batch_axis)
    base = {"name": name, "dtype": str(np.asarray(a).dtype), "batch_axis": batch_axis}
    if x is None:
        return {**base, "kind": "skipped", "reason": "a fixed input (batch_axis null) is fed whole, not sampled"}
    base.update(sample_shape=[int(d) for d in x.shape[1:]], samples=int(len(x)))
    if is_tokens(x):
        return {**base, "kind": "tokens", "features": [_tokens_feature("tokens", x)]}
    feats, facts = float_features(x, layout)
    kind = "image" if x.ndim == 4 else "table" if x.ndim == 2 else "values" if x.ndim == 1 else "sequence"
    features = [{**d, **_summary(v), "edges": (e := robust_edges(v)), "counts": bucket_counts(v, e)} for d, v in feats]
    return {**base, "kind": kind, "layout": layout if x.ndim == 4 else None, **facts, "features": features}


def max_score(y: np.ndarray, logits: bool) -> np.ndarray:
    """Per-row confidence of a ``[N, K]`` output: max softmax probability of logits, or the max value."""
    a = np.asarray(y, dtype=np.float64)
    if not logits:
        return a.max(axis=1)
    return 1.0 / np.exp(a - a.max(axis=1, keepdims=True)).sum(axis=1)


def output_fingerprint(name: str, y: np.ndarray, classification: bool, logits: bool,
                       labels: list[str] | None = None) -> dict[str, Any]:
    """The fingerprint of one output on the reference data."""
    a = np.asarray(y)
    base = {"name": name, "samples": int(len(a)) if a.ndim else 1}
    if classification and a.ndim == 2 and a.shape[1] >= 2:
        k = int(a.shape[1])
        decisions = np.argmax(a, axis=1)
        score = max_score(a, logits)
        edges = [float(e) for e in SCORE_EDGES]
        return {**base, "kind": "classification", "classes": k,
                "labels": list(labels) if labels and len(labels) == k else None,
                "class_prior": {"counts": np.bincount(decisions, minlength=k).astype(int).tolist()},
                "score": {"is": "max_softmax" if logits else "max_probability", **_summary(score), "edges": edges,
                          "counts": bucket_counts(score, edges)}}
    return {**base, "kind": "values", "features": [numeric_feature("values", "values", a)]}


def make_fingerprint(inputs: list[dict[str, Any]], arrays: list[np.ndarray], outputs: list[dict[str, Any]],
                     ys: list[np.ndarray], *, layout: str | None, labels: list[str] | None = None,
                     source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole fingerprint document.

    Args:
        inputs: The model's inputs (``name``, ``batch_axis``), in order.
        arrays: The reference data, one array per input.
        outputs: The model's outputs, in order: ``name``, ``classification`` (decides by argmax
            over classes) and ``logits`` (holds logits, not probabilities).
        ys: The model's outputs on ``arrays``.
        layout: NCHW or NHWC, for 4-d inputs.
        labels: Class names, when the task has them.
        source: Where the reference data came from (recorded as is).
    """
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "reference": dict(source or {}),
        "rules": RULES,
        "thresholds": dict(DEFAULT_THRESHOLDS),
        "inputs": [input_fingerprint(s["name"], a, s.get("batch_axis", 0), layout) for s, a in zip(inputs, arrays)],
        "outputs": [output_fingerprint(s["name"], y, bool(s.get("classification")), bool(s.get("logits", True)), labels)
                    for s, y in zip(outputs, ys)],
    }
