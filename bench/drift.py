"""Drift of new inputs (and the model's outputs on them) against a fingerprint: PSI, a binned KS, a verdict.

Each feature of :mod:`bench.fingerprint` (a channel, a grid cell, a table column, a token
sketch) and each classification output (its class prior, its confidence histogram) is
compared with the reference the fingerprint recorded:

- **PSI** (population stability index) over the feature's buckets:
  ``sum((a - e) * ln(a / e))`` with ``e`` the reference share and ``a`` the new share of each
  bucket, each floored at ``PSI_EPSILON`` (1e-4) so an empty bucket counts as a share of 1e-4.
  Rule of thumb from credit scoring (Siddiqi, *Credit Risk Scorecards*, Wiley 2006; studied in
  Yurdakul, *Statistical Properties of Population Stability Index*, 2018): below 0.1 no change,
  0.1 to 0.25 moderate, above 0.25 a significant shift.
- **KS** (two-sample Kolmogorov-Smirnov statistic, binned): the largest difference between the
  reference and the new cumulative shares, taken after the underflow bucket and after each inner
  bin, i.e. the empirical CDFs compared at ``x < e[0], x < e[1], ..., x < e[-2], x <= e[-1]``.
  It is never larger than the exact KS statistic, so the test below stays conservative. Not
  computed for tokens or the class prior (categories have no order).
- The KS critical value at level ``ks_alpha`` (0.01), Bonferroni-corrected over the ``m``
  features tested: ``c(ks_alpha / m) * sqrt((n + n') / (n * n'))`` with
  ``c(a) = sqrt(-ln(a / 2) / 2)`` (the asymptotic Kolmogorov distribution) and ``n``, ``n'`` the
  reference and new *sample* counts (a channel pools many values per sample; counting samples,
  not values, keeps the test conservative).

A feature has drifted when its PSI exceeds ``psi_drift`` or its KS its critical value; the
verdict is ``drift`` when any feature or output has. Moved features are ranked by PSI. The
classes that moved are those whose own PSI term exceeds ``psi_drift / K``.
``export/drift_reference.py`` computes the same numbers with numpy only (a test holds them
equal to 1e-6).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.fingerprint import (
    DEFAULT_THRESHOLDS,
    PSI_EPSILON,
    bucket_counts,
    float_features,
    max_score,
    token_counts,
)
from compress.core.errors import InputFileError


@dataclass(frozen=True)
class Thresholds:
    """When a PSI is moderate or drift, and the KS test's level (or a fixed KS limit)."""

    psi_moderate: float = DEFAULT_THRESHOLDS["psi_moderate"]
    psi_drift: float = DEFAULT_THRESHOLDS["psi_drift"]
    ks_alpha: float = DEFAULT_THRESHOLDS["ks_alpha"]
    ks_threshold: float | None = None


def thresholds_of(fingerprint: dict[str, Any], overrides: dict[str, float] | None = None) -> Thresholds:
    """The fingerprint's thresholds with ``overrides`` applied; a lower ``psi_drift`` lowers ``psi_moderate`` too.

    Raises:
        InputFileError: a threshold in the fingerprint is not a number.
    """
    names = set(Thresholds.__dataclass_fields__)
    stated = fingerprint.get("thresholds") or {}
    try:
        chosen = {k: float(v) for k, v in stated.items() if k in names and v is not None}
    except (TypeError, ValueError) as e:
        raise InputFileError(f"fingerprint.json thresholds: not a number ({e})") from e
    chosen.update(overrides or {})
    t = Thresholds(**chosen)
    if t.psi_moderate > t.psi_drift:
        t = Thresholds(t.psi_drift, t.psi_drift, t.ks_alpha, t.ks_threshold)
    return t


@dataclass
class Check:
    """One distribution compared: a feature of an input, or an output's class prior or confidence."""

    side: str  # input | output
    tensor: str
    name: str
    kind: str
    psi: float
    ks: float | None = None
    ks_critical: float | None = None
    status: str = "ok"  # ok | moderate | drift
    region: list[list[int]] | None = None


@dataclass
class MovedClass:
    """A class whose share of the decisions changed."""

    output: str
    index: int
    label: str | None
    reference_share: float
    new_share: float
    psi_term: float


@dataclass
class DriftReport:
    """The verdict and every number behind it."""

    verdict: str
    samples: int
    reference_samples: int
    thresholds: dict[str, Any]
    checks: list[Check]
    moved: list[Check]
    moderate: list[Check]
    classes: list[MovedClass] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def shares(counts: list[int] | np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else c


def psi_terms(reference: list[int] | np.ndarray, new: list[int] | np.ndarray, eps: float = PSI_EPSILON) -> np.ndarray:
    """Each bucket's PSI term ``(a - e) * ln(a / e)``, shares floored at ``eps``."""
    e = np.maximum(shares(reference), eps)
    a = np.maximum(shares(new), eps)
    return (a - e) * np.log(a / e)


def psi(reference: list[int] | np.ndarray, new: list[int] | np.ndarray, eps: float = PSI_EPSILON) -> float:
    """The population stability index of two bucket counts."""
    return float(psi_terms(reference, new, eps).sum())


def ks_binned(reference: list[int] | np.ndarray, new: list[int] | np.ndarray) -> float:
    """Largest difference of the cumulative shares over all buckets but the last (see the module docstring)."""
    return float(np.abs(np.cumsum(shares(reference))[:-1] - np.cumsum(shares(new))[:-1]).max())


def ks_critical(n_reference: int, n_new: int, alpha: float, tests: int) -> float:
    """The two-sample KS critical value at level ``alpha / tests`` (asymptotic)."""
    a = alpha / max(tests, 1)
    return math.sqrt(-0.5 * math.log(a / 2.0)) * math.sqrt((n_reference + n_new) / (n_reference * n_new))


def _status(c: Check, t: Thresholds) -> str:
    if c.psi > t.psi_drift or (c.ks is not None and c.ks_critical is not None and c.ks > c.ks_critical):
        return "drift"
    return "moderate" if c.psi >= t.psi_moderate else "ok"


def _batch_first(a: np.ndarray, batch_axis: int | None) -> np.ndarray:
    return np.moveaxis(np.asarray(a), batch_axis or 0, 0)


def _input_checks(fp_in: dict[str, Any], a: np.ndarray) -> list[tuple[Check, dict[str, Any], list[int]]]:
    """(check without KS, reference feature, new counts) per feature of one input."""
    name = fp_in["name"]
    x = _batch_first(a, fp_in.get("batch_axis"))
    want = fp_in.get("sample_shape")
    if want is not None and list(x.shape[1:]) != list(want):
        raise InputFileError(f"input {name!r}: the fingerprint's samples have shape {tuple(want)}, the new data's "
                             f"{tuple(x.shape[1:])} (arrays of shape {tuple(np.shape(a))})")
    refs = fp_in["features"]
    if fp_in["kind"] == "tokens":
        f = refs[0]
        return [(Check("input", name, f["name"], "tokens", 0.0), f, token_counts(x, f["tokens"]))]
    feats, _ = float_features(x, fp_in.get("layout"))
    if len(feats) != len(refs):
        raise InputFileError(f"input {name!r}: the fingerprint has {len(refs)} features, the new data gives "
                             f"{len(feats)} (another layout?)")
    return [(Check("input", name, f["name"], f["kind"], 0.0, region=f.get("region")), f,
             bucket_counts(values, f["edges"])) for (_, values), f in zip(feats, refs)]


def _output_checks(fp_out: dict[str, Any], y: np.ndarray) -> list[tuple[Check, dict[str, Any], list[int]]]:
    name = fp_out["name"]
    if fp_out["kind"] == "classification":
        a = np.asarray(y)
        if a.ndim != 2 or a.shape[1] != fp_out["classes"]:
            raise InputFileError(f"output {name!r}: expected [N, {fp_out['classes']}] scores, got {a.shape}")
        k = fp_out["classes"]
        prior = np.bincount(np.argmax(a, axis=1), minlength=k).astype(int).tolist()
        score = fp_out["score"]
        s = max_score(a, score["is"] == "max_softmax")
        return [(Check("output", name, "class prior", "class_prior", 0.0), fp_out["class_prior"], prior),
                (Check("output", name, "score", "score", 0.0), score, bucket_counts(s, score["edges"]))]
    f = fp_out["features"][0]
    return [(Check("output", name, f["name"], "values", 0.0), f, bucket_counts(np.asarray(y), f["edges"]))]


def compare(fingerprint: dict[str, Any], inputs: list[np.ndarray], outputs: list[np.ndarray] | None = None,
            thresholds: Thresholds | None = None) -> DriftReport:
    """Compare new inputs (and the model's outputs on them) with a fingerprint.

    Args:
        fingerprint: The ``fingerprint.json`` document.
        inputs: One array per fingerprinted input, in order (skipped inputs: anything).
        outputs: The model's outputs on ``inputs``, in order; None skips the output checks.
        thresholds: Defaults: the fingerprint's own.

    Raises:
        InputFileError: the arrays do not fit the fingerprint (count, per-sample shape).
    """
    t = thresholds or thresholds_of(fingerprint)
    fp_inputs = fingerprint["inputs"]
    if len(inputs) != len(fp_inputs):
        raise InputFileError(f"the fingerprint has {len(fp_inputs)} input(s), got {len(inputs)} array(s)")
    rows: list[tuple[Check, dict[str, Any], list[int], int]] = []
    n_new = 0
    ref_n = 0
    for fp_in, a in zip(fp_inputs, inputs):
        if fp_in["kind"] == "skipped":
            continue
        n = int(_batch_first(a, fp_in.get("batch_axis")).shape[0])
        if n < 1:
            raise InputFileError(f"input {fp_in['name']!r}: no samples")
        n_new, ref_n = n_new or n, ref_n or fp_in["samples"]
        rows += [(c, f, cnt, fp_in["samples"]) for c, f, cnt in _input_checks(fp_in, a)]
    if outputs is not None:
        for fp_out, y in zip(fingerprint["outputs"], outputs):
            rows += [(c, f, cnt, fp_out["samples"]) for c, f, cnt in _output_checks(fp_out, y)]
    ordered = [r for r in rows if r[0].kind not in ("tokens", "class_prior")]
    tests = len(ordered)
    classes: list[MovedClass] = []
    for c, f, counts, n_ref in rows:
        c.psi = psi(f["counts"], counts)
        if c.kind not in ("tokens", "class_prior"):
            c.ks = ks_binned(f["counts"], counts)
            c.ks_critical = t.ks_threshold if t.ks_threshold is not None else ks_critical(n_ref, n_new, t.ks_alpha, tests)
        c.status = _status(c, t)
        if c.kind == "class_prior" and c.status == "drift":
            classes += _moved_classes(c.tensor, f["counts"], counts, t, _labels(fingerprint, c.tensor))
    checks = [r[0] for r in rows]
    moved = sorted((c for c in checks if c.status == "drift"), key=lambda c: (-c.psi, -(c.ks or 0.0)))
    moderate = sorted((c for c in checks if c.status == "moderate"), key=lambda c: -c.psi)
    notes = []
    noise = 11 * (1 / max(ref_n, 1) + 1 / max(n_new, 1))
    if noise > 0.1:
        notes.append(f"few samples: with {n_new} new and {ref_n} reference samples, a PSI of about {noise:.2f} "
                     "is sampling noise alone; compare at least a few hundred samples")
    return DriftReport(verdict="drift" if moved else "no drift", samples=n_new, reference_samples=ref_n,
                       thresholds=asdict(t), checks=checks, moved=moved, moderate=moderate,
                       classes=sorted(classes, key=lambda m: -m.psi_term), notes=notes)


def _labels(fingerprint: dict[str, Any], output: str) -> list[str] | None:
    return next((o.get("labels") for o in fingerprint["outputs"] if o["name"] == output), None)


def _moved_classes(output: str, reference: list[int], new: list[int], t: Thresholds,
                   labels: list[str] | None) -> list[MovedClass]:
    terms = psi_terms(reference, new)
    limit = t.psi_drift / len(terms)
    ref_s, new_s = shares(reference), shares(new)
    return [MovedClass(output, k, labels[k] if labels else None, float(ref_s[k]), float(new_s[k]), float(terms[k]))
            for k in range(len(terms)) if terms[k] > limit]


def describe(c: Check) -> str:
    """``input 'x' cell c0 [2,3]: PSI 0.41, KS 0.22 (critical 0.14)``."""
    ks = f", KS {c.ks:.3f} (critical {c.ks_critical:.3f})" if c.ks is not None else ""
    where = ""
    if c.region and any(r1 - r0 > 1 for r0, r1 in c.region):
        where = " (elements " + ", ".join(f"{r0}-{r1 - 1}" for r0, r1 in c.region) + ")"
    return f"{c.side} {c.tensor!r} {c.name}{where}: PSI {c.psi:.3f}{ks}"


def describe_class(m: MovedClass) -> str:
    label = f" ({m.label})" if m.label else ""
    way = "more" if m.new_share > m.reference_share else "fewer"
    return (f"output {m.output!r} class {m.index}{label}: {m.reference_share:.1%} -> {m.new_share:.1%} of decisions "
            f"({way}; PSI term {m.psi_term:.3f})")
