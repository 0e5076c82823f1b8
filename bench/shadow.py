"""Shadow testing: a candidate model beside the one in production, on the same logged inputs.

Everything here compares two lists of outputs (the baseline's and the candidate's, one array
per output, samples on axis 0); running the models, timing them and writing files happen
above (:mod:`compress.runner.shadow`). Per output, by what it is (:mod:`bench.outputs`):

* decisions (argmax over classes, or a one-value score against its threshold): agreement,
  flip rate (share of samples whose decision changed), the confusion matrix of baseline
  decision x candidate decision, and flips per baseline class;
* confidence (the probability a model gives its own decision): the mean shift
  ``|p_c(b) - p_b(b)|`` of the candidate's probability for the baseline's decision ``b``,
  the mean confidence of each, the mean KL divergence ``KL(p_b || p_c)``, and the ECE of the
  candidate's confidence taking the baseline's decisions as labels;
* calibration against labels, when given: accuracy and ECE of each (15 equal-width bins,
  Guo et al. 2017, "On Calibration of Modern Neural Networks");
* outputs without a decision (regression, embeddings): mean and max absolute difference,
  relative error (mean |c - b| over the baseline's standard deviation) and cosine.

The worst-disagreeing samples are ranked by (number of outputs whose decision flipped,
descending; then the summed divergence, descending), where the divergence of a sample is
``KL(p_b || p_c)`` for a decision output and ``mean |c - b| / std(b)`` for the others.

numpy only (with :mod:`bench.accuracy` and :mod:`bench.outputs`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.accuracy import class_probabilities
from bench.outputs import ResolvedOutput, decisions

ECE_BINS = 15
"""Equal-width confidence bins of the ECE, as in Guo et al. (2017)."""

WORST_DEFAULT = 20
"""Worst-disagreeing samples kept by default."""

TOP_FLIP_PAIRS = 10
"""(baseline class -> candidate class) pairs listed, most frequent first."""

_EPS = 1e-12


@dataclass(frozen=True)
class Thresholds:
    """What the candidate must keep to pass; None switches a check off.

    Attributes:
        max_flip_rate: Largest share of samples whose decision may change, per decision output.
        max_accuracy_drop: Largest drop of accuracy against the labels (needs labels).
        max_ece_increase: Largest increase of ECE against the labels (needs labels).
        max_confidence_shift: Largest mean ``|p_c(b) - p_b(b)|`` (see the module docstring).
        max_rel_error: Largest mean relative error of an output without a decision.
    """

    max_flip_rate: float | None = 0.01
    max_accuracy_drop: float | None = None
    max_ece_increase: float | None = None
    max_confidence_shift: float | None = None
    max_rel_error: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the sample-weighted mean of ``|accuracy - mean confidence|`` over equal-width bins.

    Bin ``m`` holds confidences in ``((m - 1) / M, m / M]`` (a confidence of 0 goes to the first).

    Args:
        confidence: The probability each sample's decision was given, in [0, 1].
        correct: Whether each decision was right (bool or 0/1).
        bins: M, the number of bins.
    """
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    ok = np.asarray(correct, dtype=np.float64)
    if not len(conf):
        return 0.0
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    acc = np.bincount(idx, weights=ok, minlength=bins)
    mean_conf = np.bincount(idx, weights=conf, minlength=bins)
    return float(np.abs(acc - mean_conf).sum() / len(conf))


def match_outputs(baseline: list[str], candidate: list[str]) -> tuple[list[int], str]:
    """The candidate's output index for each baseline output, and how they were matched.

    By name when both models name the same outputs (any order), else by position (an ONNX
    and a TFLite model of the same network name their outputs differently).

    Raises:
        ValueError: When the models have different numbers of outputs.
    """
    if len(baseline) != len(candidate):
        raise ValueError(f"the baseline has {len(baseline)} output(s) ({', '.join(baseline)}), the candidate "
                         f"{len(candidate)} ({', '.join(candidate)}): they are not the same model")
    if sorted(baseline) == sorted(candidate) and len(set(baseline)) == len(baseline):
        return [candidate.index(n) for n in baseline], "name"
    return list(range(len(baseline))), "position"


def _confusion(b: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(b * k + c, minlength=k * k)[: k * k].reshape(k, k)


def _flips(b: np.ndarray, c: np.ndarray, k: int) -> dict[str, Any]:
    cm = _confusion(b, c, k)
    support = cm.sum(axis=1)
    flipped = support - np.diag(cm)
    off = [(int(i), int(j), int(cm[i, j])) for i in range(k) for j in range(k) if i != j and cm[i, j]]
    off.sort(key=lambda t: (-t[2], t[0], t[1]))
    return {
        "confusion_matrix": cm.tolist(),
        "flips_by_class": [{"class": i, "support": int(s), "flips": int(f), "flip_rate": float(f / s) if s else None}
                           for i, (s, f) in enumerate(zip(support, flipped))],
        "top_flips": [{"from": i, "to": j, "count": n} for i, j, n in off[:TOP_FLIP_PAIRS]],
    }


def _decision_measures(base: np.ndarray, cand: np.ndarray, spec: ResolvedOutput,
                       labels: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Measures of a decision output; also per sample: flipped (bool) and KL(p_b || p_c)."""
    db, dc = decisions(base, spec), decisions(cand, spec)
    if db is None or dc is None:
        raise ValueError(f"output {spec.name!r} has no decision ({spec.decision})")
    pb = class_probabilities(base, spec.probabilities)
    pc = class_probabilities(cand, spec.probabilities)
    k = pb.shape[1]
    rows = np.arange(len(db))
    flipped = db != dc
    conf_b, conf_c = pb[rows, db], pc[rows, dc]
    shift = np.abs(pc[rows, db] - pb[rows, db])
    kl = (pb * (np.log(pb + _EPS) - np.log(pc + _EPS))).sum(axis=1)
    m: dict[str, Any] = {
        "decision": spec.decision, "classes": k,
        "agreement": float(1.0 - flipped.mean()), "flip_rate": float(flipped.mean()), "flips": int(flipped.sum()),
        **_flips(db, dc, k),
        "confidence": {
            "baseline_mean": float(conf_b.mean()), "candidate_mean": float(conf_c.mean()),
            "shift_mean": float(shift.mean()), "shift_max": float(shift.max()),
            "kl_mean": float(kl.mean()),
            "ece_vs_baseline": expected_calibration_error(conf_c, ~flipped),
        },
    }
    if labels is not None:
        y = np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(np.int64)
        m["labels"] = {
            "baseline_accuracy": float((db == y).mean()), "candidate_accuracy": float((dc == y).mean()),
            "baseline_ece": expected_calibration_error(conf_b, db == y),
            "candidate_ece": expected_calibration_error(conf_c, dc == y),
        }
        m["labels"]["accuracy_drop"] = m["labels"]["baseline_accuracy"] - m["labels"]["candidate_accuracy"]
        m["labels"]["ece_increase"] = m["labels"]["candidate_ece"] - m["labels"]["baseline_ece"]
    return m, flipped, np.maximum(kl, 0.0)


def _value_measures(base: np.ndarray, cand: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Measures of an output without a decision; also per sample: mean |c - b| / std(b)."""
    b = base.reshape(len(base), -1).astype(np.float64)
    c = cand.reshape(len(cand), -1).astype(np.float64)
    d = np.abs(c - b)
    spread = float(b.std()) or float(np.abs(b).max()) or 1.0
    den = float(np.linalg.norm(b) * np.linalg.norm(c))
    cosine = float((b * c).sum() / den) if den > 0 else float(np.array_equal(b, c))
    per_sample = d.mean(axis=1) / spread
    return {"decision": None, "mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max()),
            "rel_error": float(d.mean() / spread), "cosine": cosine}, per_sample


def compare_outputs(
    baseline: list[np.ndarray],
    candidate: list[np.ndarray],
    specs: list[ResolvedOutput],
    labels: dict[int, np.ndarray] | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Compare the candidate's outputs with the baseline's, output by output.

    Args:
        baseline: The baseline's outputs (one array per output, samples on axis 0).
        candidate: The candidate's, in the baseline's order (see :func:`match_outputs`).
        specs: What each output is (:func:`bench.outputs.resolve_outputs` on the baseline's).
        labels: Labels by output index, for accuracy and ECE.

    Returns:
        The measures per output; per sample, the number of outputs whose decision flipped
        and the summed divergence (what ranks the worst samples).

    Raises:
        ValueError: When counts or shapes differ, naming the output.
    """
    labels = labels or {}
    if not len(baseline) == len(candidate) == len(specs):
        raise ValueError(f"{len(baseline)} baseline outputs, {len(candidate)} candidate outputs, {len(specs)} described")
    n = len(baseline[0]) if baseline else 0
    flips, divergence = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64)
    measures = []
    for spec, b, c in zip(specs, baseline, candidate):
        b, c = np.asarray(b), np.asarray(c)
        if b.shape != c.shape:
            raise ValueError(f"output {spec.name!r}: the candidate gives shape {tuple(c.shape)}, "
                             f"the baseline {tuple(b.shape)}")
        nonfinite = int((~np.isfinite(c)).sum()) if np.issubdtype(c.dtype, np.inexact) else 0
        c = np.nan_to_num(c.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        b = b.astype(np.float64)
        head = {"name": spec.name, "index": spec.index, "task": spec.task, "samples": len(b), "nonfinite": nonfinite}
        if spec.decision in ("argmax", "threshold"):
            y = labels.get(spec.index)
            if y is not None and len(y) != len(b):
                raise ValueError(f"output {spec.name!r}: {len(y)} labels for {len(b)} samples")
            m, flipped, div = _decision_measures(b, c, spec, y)
            flips += flipped
        else:
            m, div = _value_measures(b, c)
        divergence += np.nan_to_num(div, nan=0.0, posinf=1e300)
        measures.append({**head, **m})
    return measures, flips, divergence


def worst_samples(flips: np.ndarray, divergence: np.ndarray, n: int = WORST_DEFAULT) -> np.ndarray:
    """Indices of the ``n`` worst samples: most flipped outputs first, then largest divergence.

    Samples that neither flipped nor diverged at all are never listed.
    """
    order = np.lexsort((np.arange(len(flips)), -divergence, -flips))
    order = order[(flips[order] > 0) | (divergence[order] > 0)]
    return order[:n]


def _check(checks: list[dict[str, Any]], output: str, measure: str, value: float | None, limit: float | None,
           higher_is_worse: bool = True) -> None:
    if limit is None or value is None:
        return
    ok = value <= limit if higher_is_worse else value >= limit
    checks.append({"output": output, "measure": measure, "value": value, "limit": limit, "passed": bool(ok)})


def verdict(measures: list[dict[str, Any]], thresholds: Thresholds) -> dict[str, Any]:
    """Each threshold against its measured value, per output; passed when every check passed.

    A candidate that gives NaN or infinity anywhere fails, whatever the thresholds.
    """
    checks: list[dict[str, Any]] = []
    for m in measures:
        name = m["name"]
        checks.append({"output": name, "measure": "nonfinite", "value": m["nonfinite"], "limit": 0,
                       "passed": m["nonfinite"] == 0})
        if m["decision"] is not None:
            _check(checks, name, "flip_rate", m["flip_rate"], thresholds.max_flip_rate)
            _check(checks, name, "confidence_shift", m["confidence"]["shift_mean"], thresholds.max_confidence_shift)
            lab = m.get("labels") or {}
            _check(checks, name, "accuracy_drop", lab.get("accuracy_drop"), thresholds.max_accuracy_drop)
            _check(checks, name, "ece_increase", lab.get("ece_increase"), thresholds.max_ece_increase)
        else:
            _check(checks, name, "rel_error", m["rel_error"], thresholds.max_rel_error)
    failed = [c for c in checks if not c["passed"]]
    return {"passed": not failed, "checks": checks,
            "reasons": [f"output {c['output']!r}: {c['measure']} {_fmt(c['value'])} > limit {_fmt(c['limit'])}"
                        for c in failed]}


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def summary_line(result: dict[str, Any]) -> str:
    """One line: the verdict and, per decision output, agreement and flips."""
    parts = []
    for m in result["outputs"]:
        if m["decision"] is not None:
            parts.append(f"{m['name']}: agreement {m['agreement']:.4f}, {m['flips']} flip(s) of {m['samples']} "
                         f"(flip rate {m['flip_rate']:.4f})")
        else:
            parts.append(f"{m['name']}: rel error {m['rel_error']:.3g}")
    head = "PASS" if result["verdict"]["passed"] else "FAIL"
    return f"shadow {head}: " + "; ".join(parts)
