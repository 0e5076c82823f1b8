"""Fidelity of an artifact to a reference model, per output, and the gate it must pass.

A single number over a whole tensor hides what matters: a detector's class scores (0-1) vanish
under its box coordinates (pixels) in a cosine, and a one-value output has a per-row cosine of
1.0 whatever it decides. So every output is measured for what it is (:mod:`bench.outputs`):
the whole-tensor numbers (cosine, SQNR, relative error, dead positions, non-finite values) for
all, decisions for classification heads, probabilities compared as probabilities, and
detections decoded and matched for detection heads. :func:`evaluate_gate` turns these into a
verdict with reasons that name the output, the measure, the value and the limit.

numpy and pydantic only; recipe tolerances are read by attribute.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bench.accuracy import class_probabilities, task_metrics
from bench.outputs import ResolvedOutput, decisions
from compress.core.report_schema import SQNR_CAP_DB, Fidelity, GateResult, OutputFidelity

MAX_DETECTIONS = 1000
"""Detections kept per image, highest scores first (raw outputs are compared before NMS; this bounds the matching)."""

COLLAPSE_SUPPORT = 0.05
"""A class the reference decides on at least this share of samples must be found again."""

COLLAPSE_AUC = 0.55
"""A binary head at or below this ROC-AUC ranks no better than chance."""


# --------------------------------------------------------------------------- whole-tensor measures


def _cosine(a: np.ndarray, b: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Cosine; a zero vector matches only a zero vector (an all-zero artifact must not score 1)."""
    num = (a * b).sum(axis=axis, dtype=np.float64)
    na = np.sqrt((a * a).sum(axis=axis, dtype=np.float64))
    nb = np.sqrt((b * b).sum(axis=axis, dtype=np.float64))
    den = na * nb
    same_zero = np.asarray((na == 0) & (nb == 0), dtype=np.float64)
    return np.divide(num, den, out=same_zero, where=den > 0)


def sqnr_db(reference: np.ndarray, output: np.ndarray) -> float:
    """Signal-to-noise ratio of ``output`` as a copy of ``reference``, capped at +-:data:`SQNR_CAP_DB`."""
    signal = float(np.square(reference).sum(dtype=np.float64))
    noise = float(np.square(reference - output).sum(dtype=np.float64))
    if noise == 0:
        return SQNR_CAP_DB
    if signal == 0:
        return -SQNR_CAP_DB
    return float(np.clip(10 * math.log10(signal / noise), -SQNR_CAP_DB, SQNR_CAP_DB))


def _positions(a: np.ndarray, layout: str | None) -> np.ndarray:
    """``[observations, positions]``: a detection output's channels over images x anchors, else per-sample values."""
    if layout == "channels_first":
        return a.transpose(0, 2, 1).reshape(-1, a.shape[1])
    if layout == "channels_last":
        return a.reshape(-1, a.shape[2])
    return a.reshape(len(a), -1)


def _dead(ref: np.ndarray, out: np.ndarray, layout: str | None) -> tuple[int, int]:
    """Positions where the artifact is constant (or all zero) and the reference is not.

    A detection output's channels are different quantities (pixels, scores), so each is judged
    against its own magnitude; elsewhere a position must carry at least 1% of the tensor's
    spread to count as varying, so that a column quantized to one level because it hardly
    moved is not called dead.
    """
    r, o = _positions(ref, layout), _positions(out, layout)
    r_std, o_std = r.std(axis=0, dtype=np.float64), o.std(axis=0, dtype=np.float64)
    r_abs, o_abs = np.abs(r).max(axis=0), np.abs(o).max(axis=0)
    floor = 1e-3 * r_abs if layout else np.full(r.shape[1], 1e-2 * float(ref.std(dtype=np.float64)))
    stuck = (r_std > floor) & (r_std > 0) & (o_std <= 1e-6 * r_std)
    zeroed = (o_abs == 0) & (r_abs > floor) & (r_abs > 0)
    return int((stuck | zeroed).sum()), int(r.shape[1])


# --------------------------------------------------------------------------- decisions


def _class_agreement(of: dict[str, Any], ref: np.ndarray, out: np.ndarray, spec: ResolvedOutput, top_k: int) -> None:
    d_ref, d_out = decisions(ref, spec), decisions(out, spec)
    if d_ref is None or d_out is None:
        return
    of["agreement"] = float((d_ref == d_out).mean())
    width = int(np.prod(ref.shape[1:])) if ref.ndim > 1 else 1
    k = max(width, 2)
    support = np.bincount(d_ref, minlength=k)[:k]
    predicted = np.bincount(d_out, minlength=k)[:k]
    hits = np.bincount(d_ref[d_ref == d_out], minlength=k)[:k]
    of["support"], of["predicted"] = support.tolist(), predicted.tolist()
    of["precision"] = [float(h / p) if p else None for h, p in zip(hits, predicted)]
    of["recall"] = [float(h / s) if s else None for h, s in zip(hits, support)]
    if spec.decision == "argmax" and width > top_k:
        flat = out.reshape(len(out), -1)
        top = np.argpartition(-flat, top_k - 1, axis=1)[:, :top_k]
        of["top_k"] = top_k
        of["top_k_agreement"] = float((top == d_ref[:, None]).any(axis=1).mean())
    p_ref = class_probabilities(ref, spec.probabilities)
    p_out = class_probabilities(out, spec.probabilities)
    diff = np.abs(p_ref - p_out)
    of["prob_max_abs_diff"] = float(diff.max())
    of["prob_total_variation"] = float(0.5 * diff.sum(axis=1).mean())


# --------------------------------------------------------------------------- detections


def decode_detections(a: np.ndarray, layout: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Detections above the score threshold, per image.

    Args:
        a: The raw output, ``[N, 4 (+1) + C, A]`` (channels_first) or ``[N, A, 4 (+1) + C]``.
        layout: Attributes of ``DetectionSpec``: layout, box_format, objectness, score_threshold.

    Returns:
        Per image: boxes ``[D, 4]`` as xyxy, classes ``[D]``, scores ``[D]``; at most
        :data:`MAX_DETECTIONS`, highest score first. Score = max class score x objectness.
    """
    rows = a.transpose(0, 2, 1) if getattr(layout, "layout", "channels_first") == "channels_first" else a
    obj = bool(getattr(layout, "objectness", False))
    first = 5 if obj else 4
    if rows.shape[2] <= first:
        raise ValueError(f"a detection output needs more than {first} channels (got {rows.shape[2]})")
    cls_scores = rows[:, :, first:]
    cls = cls_scores.argmax(axis=2)
    score = cls_scores.max(axis=2) * (rows[:, :, 4] if obj else 1.0)
    box = rows[:, :, :4]
    if getattr(layout, "box_format", "xywh") == "xywh":
        half = box[:, :, 2:] / 2
        box = np.concatenate([box[:, :, :2] - half, box[:, :, :2] + half], axis=2)
    thr = float(getattr(layout, "score_threshold", 0.25))
    result = []
    for i in range(len(rows)):
        keep = np.flatnonzero(score[i] > thr)
        keep = keep[np.argsort(-score[i, keep], kind="stable")][:MAX_DETECTIONS]
        result.append((box[i, keep].astype(np.float64), cls[i, keep], score[i, keep].astype(np.float64)))
    return result


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes ``[n, 4]`` x ``[m, 4]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _detection_fidelity(of: dict[str, Any], ref: np.ndarray, out: np.ndarray, spec: ResolvedOutput) -> None:
    """Greedy matching per image (artifact's detections by score, IoU >= threshold, same class)."""
    layout = spec.detection
    iou_thr = float(getattr(layout, "iou_threshold", 0.5))
    n_ref = n_out = 0
    ious: list[float] = []
    pairs: list[tuple[float, float]] = []
    for (rb, rc, rs), (ob, oc, os_) in zip(decode_detections(ref, layout), decode_detections(out, layout)):
        n_ref += len(rb)
        n_out += len(ob)
        if not len(rb) or not len(ob):
            continue
        iou = _iou(ob, rb)
        iou[oc[:, None] != rc[None, :]] = -1.0
        taken = np.zeros(len(rb), dtype=bool)
        for i in range(len(ob)):  # already sorted by score, highest first
            row = np.where(taken, -1.0, iou[i])
            j = int(row.argmax())
            if row[j] >= iou_thr:
                taken[j] = True
                ious.append(float(row[j]))
                pairs.append((float(rs[j]), float(os_[i])))
    matched = len(ious)
    of["reference_detections"], of["detections"], of["matched_detections"] = n_ref, n_out, matched
    of["detection_precision"] = matched / n_out if n_out else None
    of["detection_recall"] = matched / n_ref if n_ref else None
    of["detection_f1"] = 2 * matched / (n_out + n_ref) if n_out + n_ref else 1.0
    of["detection_mean_iou"] = float(np.mean(ious)) if ious else None
    of["detection_count_ratio"] = n_out / n_ref if n_ref else None
    if len(pairs) >= 2:
        s = np.array(pairs)
        if s[:, 0].std() > 0 and s[:, 1].std() > 0:
            of["detection_score_correlation"] = float(np.corrcoef(s[:, 0], s[:, 1])[0, 1])


# --------------------------------------------------------------------------- per output, per artifact


def _finite(a: np.ndarray) -> np.ndarray:
    """A float copy with NaN/inf set to 0: the measures stay numbers; the count fails the gate.

    float32 stays float32 (a detector's outputs on an eval set reach hundreds of MB; every sum
    accumulates in float64), anything else becomes float64.
    """
    dtype = np.float32 if a.dtype in (np.float32, np.float16) else np.float64
    return np.nan_to_num(a.astype(dtype), copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _label_metrics(a: np.ndarray, spec: ResolvedOutput, y: np.ndarray) -> dict[str, Any]:
    if spec.task not in ("classification", "regression"):
        return {}
    m = task_metrics(spec.task, a, y, probabilities=spec.probabilities)
    m.pop("confusion_matrix", None)
    return m


def measure_output(
    reference: np.ndarray, output: np.ndarray, spec: ResolvedOutput, y: np.ndarray | None = None, top_k: int = 5
) -> OutputFidelity:
    """Every measure of one output that applies to its task.

    Raises:
        ValueError: When the shapes differ or there are no samples (naming the output).
    """
    if reference.shape != output.shape:
        raise ValueError(f"output {spec.name!r}: shape {tuple(output.shape)} differs from the reference's "
                         f"{tuple(reference.shape)}")
    if not len(reference):
        raise ValueError(f"output {spec.name!r}: no samples to compare")
    nonfinite = int((~np.isfinite(output)).sum()) if np.issubdtype(output.dtype, np.inexact) else 0
    ref, out = _finite(reference), _finite(output)
    if ref.ndim == 1:
        ref, out = ref[:, None], out[:, None]
    n = len(ref)
    per_sample = ref.reshape(n, -1).shape[1] if n else 0
    spread = float(ref.std(dtype=np.float64))
    if spread == 0:
        spread = float(np.abs(ref).max()) or 1.0
    abs_diff = np.abs(out - ref)
    layout = getattr(spec.detection, "layout", "channels_first") if spec.task == "detection" else None
    dead, positions = _dead(ref, out, layout)
    total = float(np.square(ref - ref.mean(axis=0, dtype=np.float64)).sum())
    of: dict[str, Any] = {
        "name": spec.name, "index": spec.index, "task": spec.task, "probabilities": spec.probabilities,
        "weight": spec.weight, "samples": n,
        "cosine": float(_cosine(ref.ravel(), out.ravel())),
        "sqnr_db": sqnr_db(ref, out),
        "max_rel_error": float(abs_diff.max()) / spread if abs_diff.size else 0.0,
        "mean_rel_error": float(abs_diff.mean(dtype=np.float64)) / spread if abs_diff.size else 0.0,
        "r2": 1.0 - float(np.square(abs_diff).sum(dtype=np.float64)) / total if total > 0 else None,
        "dead_fraction": dead / positions if positions else 0.0, "dead_positions": dead, "positions": positions,
        "nonfinite": nonfinite,
    }
    if per_sample > 1:
        cos = _cosine(ref.reshape(n, -1), out.reshape(n, -1), axis=1)
        of["cosine_per_sample_mean"], of["cosine_per_sample_min"] = float(cos.mean()), float(cos.min())
    if spec.decision in ("argmax", "threshold"):
        _class_agreement(of, ref, out, spec, top_k)
    elif spec.decision == "detections":
        _detection_fidelity(of, ref, out, spec)
    if y is not None:
        of["metrics"] = _label_metrics(out, spec, y)
        of["reference_metrics"] = _label_metrics(ref, spec, y)
    return OutputFidelity(**of)


def measure_fidelity(
    reference_outputs: list[np.ndarray],
    outputs: list[np.ndarray],
    specs: list[ResolvedOutput],
    reference_name: str,
    labels: dict[int, np.ndarray] | None = None,
    top_k: int = 5,
) -> Fidelity:
    """Measure an artifact's outputs against a reference model's on the same inputs.

    Args:
        reference_outputs: The reference's outputs, one array per output.
        outputs: The artifact's outputs, same order.
        specs: What each output is (:func:`bench.outputs.resolve_outputs`).
        reference_name: Name of the reference (the parent artifact or the baseline).
        labels: Labels by output index, for the task metrics of those outputs.
        top_k: ``task.top_k``: top-k agreement is measured for outputs with more classes.

    Returns:
        The per-output fidelity.

    Raises:
        ValueError: When the number of outputs or an output's shape differs.
    """
    if not len(reference_outputs) == len(outputs) == len(specs):
        raise ValueError(f"the artifact has {len(outputs)} outputs, the reference {len(reference_outputs)}, "
                         f"{len(specs)} described")
    labels = labels or {}
    return Fidelity(reference=reference_name, outputs=[
        measure_output(np.asarray(r), np.asarray(o), s, labels.get(s.index), top_k)
        for r, o, s in zip(reference_outputs, outputs, specs)
    ])


# --------------------------------------------------------------------------- the gate


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class _Checks:
    """Collects the checks of one artifact: values, limits, reasons."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.checked: dict[str, dict[str, Any]] = {}
        self.failed: set[str] = set()

    def record(self, out: OutputFidelity, measure: str, value: float, limit: float, vs: str, ok: bool,
               reason: str) -> None:
        gated = out.weight > 0
        self.checked.setdefault(out.name, {})[measure] = {
            "value": value, "limit": limit, "vs": vs, "passed": ok, "gated": gated}
        if not ok and gated:
            self.reasons.append(f"output {out.name!r}: {reason}")
            self.failed.add(measure)

    def check(self, out: OutputFidelity, measure: str, label: str, value: float | None, limit: float | None,
              vs: str, higher_is_better: bool, unit: str = "", detail: str = "") -> None:
        if value is None or limit is None:
            return
        # written so that NaN fails: every comparison with NaN is False
        ok = bool(value >= limit) if higher_is_better else bool(value <= limit)
        op = "<" if higher_is_better else ">"
        self.record(out, measure, value, limit, vs, ok,
                    f"{label} {_fmt(value)}{unit} {op} {_fmt(limit)}{unit} vs {vs}" + (f" ({detail})" if detail else ""))


def _metric_vs_baseline(out: OutputFidelity, metrics: dict[str, Any] | None,
                        base: dict[str, Any] | None) -> tuple[str, float, float] | None:
    """(name, artifact's value, baseline's value) of the metric bounded by ``max_metric_drop``.

    With labels: accuracy (classification) or R2 (regression). Without: the baseline's own
    outputs are the truth, so the metric is agreement, detection F1, R2 or cosine to them (1 at best).
    """
    metrics, base = metrics or {}, base or {}
    key = {"classification": "accuracy", "regression": "r2"}.get(out.task)
    if key and metrics.get(key) is not None and base.get(key) is not None:
        return key, float(metrics[key]), float(base[key])
    fallback = {"classification": ("agreement", out.agreement),
                "detection": ("detection F1", out.detection_f1),
                "regression": ("R2", out.r2),
                "embedding": ("cosine per sample",
                              out.cosine if out.cosine_per_sample_mean is None else out.cosine_per_sample_mean)}
    name, value = fallback.get(out.task, ("", None))
    return None if value is None else (name, float(value), 1.0)


def _collapse(c: _Checks, out: OutputFidelity, vs: str, metrics: dict[str, Any] | None,
              base: dict[str, Any] | None) -> None:
    """A class the baseline decides often must be found again; a ranking head must still rank."""
    if out.support and out.recall and out.predicted and out.samples:
        for k, (s, r) in enumerate(zip(out.support, out.recall)):
            share = s / out.samples
            if share >= COLLAPSE_SUPPORT and r is not None:
                c.record(out, f"recall_class_{k}", r, 0.0, vs, r > 0,
                         f"class {k} is never found (recall 0 vs {vs}, which decides it on {share:.0%} of samples; "
                         f"the artifact decides it on {out.predicted[k]} of {out.samples})")
    auc, base_auc = (metrics or {}).get("roc_auc"), (base or {}).get("roc_auc")
    if auc is not None and base_auc is not None and base_auc > 0.6:
        auc = float(auc)
        c.record(out, "roc_auc", auc, COLLAPSE_AUC, vs, auc > COLLAPSE_AUC,
                 f"ROC-AUC {_fmt(auc)} <= {COLLAPSE_AUC} (chance) where {vs}'s was {_fmt(float(base_auc))}")


def _fixes(failed: set[str], precision: str, compressed: bool, detection: bool) -> list[str]:
    fixes: list[str] = []
    if compressed:
        fixes.append("lower prune.ratio (or distill.width) / more fine-tuning epochs (distill_from_unpruned: true)")
    elif precision == "fp16":
        fixes.append("keep the failing output's last layers in fp32, or use fp32")
    elif precision == "fp32":
        fixes.append("check the export against its model (float parity should be ~1e-5): opset, dynamic axes")
    else:
        if detection and failed & {"detection_f1", "dead_fraction"}:
            fixes.append("exclude the detector's output head (its final Concat/Sigmoid nodes, quantize.exclude): "
                         "boxes in pixels set one int8 scale that wipes out scores in [0, 1]")
        fixes += [
            "exclude the most sensitive nodes (quantize.exclude) or let tuning find them (quantize.tolerable_loss)",
            "per_channel: true (or false if it fails on this runtime)",
            "QAT (a qat step before export)",
            "fp16 (quantize.method: fp16) if int8 cannot hold this model",
        ]
    if "nonfinite" in failed:
        fixes.insert(0, "non-finite values: an overflow (fp16 range, int32 bias); keep the overflowing layers in fp32")
    return fixes


def evaluate_gate(
    vs_parent: Fidelity | None,
    vs_baseline: Fidelity | None,
    tolerance: Any,
    precision: str,
    baseline_metrics: dict[int, dict] | None = None,
    metrics: dict[int, dict] | None = None,
    compressed: bool | None = None,
    baseline: Fidelity | None = None,
) -> GateResult:
    """Check an artifact's fidelity against its tolerances; every output must pass.

    Agreement, SQNR, cosine, dead fraction, detection F1 and non-finite values are checked
    against the parent (SQNR means nothing between different models); ``max_metric_drop`` and
    the collapse checks against the baseline. An output of weight 0 is reported, not gated.

    Args:
        vs_parent: The artifact against the model it was made from, or None.
        vs_baseline: The artifact against the baseline model, or None.
        tolerance: Attributes of ``compress.intake.recipe.GateTolerance``; None fields are not checked.
        precision: The artifact's precision (fp32, fp16, int8, ...), for the fixes.
        baseline_metrics: The baseline's task metrics by output index (default: from
            ``baseline``, else those measured in ``vs_baseline`` from labels).
        metrics: The artifact's task metrics by output index (default: from ``vs_baseline``).
        compressed: A torch step (distill, prune) changed the model, so the fixes are about
            compression; default: when there is no ``vs_parent`` (a function-changing step).
        baseline: The baseline measured against itself (its task metrics per output), optional.

    Returns:
        The verdict, its reasons, fixes, and every checked value.
    """
    c = _Checks()
    detection = False
    if compressed is None:
        compressed = vs_parent is None
    if baseline_metrics is None and baseline is not None:
        baseline_metrics = {o.index: o.metrics for o in baseline.outputs if o.metrics}
    # the artifact's own output (non-finite, stuck positions) against whichever reference there is;
    # agreement, SQNR, cosine and detections only against the parent (another model differs by design)
    own = vs_parent if vs_parent is not None else vs_baseline
    for o in own.outputs if own is not None else []:
        detection |= o.task == "detection"
        c.check(o, "nonfinite", "non-finite values", float(o.nonfinite), 0.0, own.reference, False)
        c.check(o, "dead_fraction", "dead fraction", o.dead_fraction, getattr(tolerance, "max_dead_fraction", None),
                own.reference, False,
                detail=f"{o.dead_positions} of {o.positions} positions stuck where the reference varies")
    if vs_parent is not None:
        vs = vs_parent.reference
        for o in vs_parent.outputs:
            c.check(o, "agreement", "decision agreement", o.agreement, getattr(tolerance, "min_agreement", None),
                    vs, True)
            c.check(o, "sqnr_db", "SQNR", o.sqnr_db, getattr(tolerance, "min_sqnr_db", None), vs, True, " dB")
            c.check(o, "cosine", "cosine", o.cosine, getattr(tolerance, "min_cosine", None), vs, True)
            c.check(o, "detection_f1", "detection F1", o.detection_f1, getattr(tolerance, "min_detection_f1", None),
                    vs, True, detail=f"{o.matched_detections} of {o.reference_detections} detections found, "
                                     f"{o.detections} made; recall {_fmt(o.detection_recall or 0.0)}")
    if vs_baseline is not None:
        vs = vs_baseline.reference
        max_drop = getattr(tolerance, "max_metric_drop", None)
        for o in vs_baseline.outputs:
            m = (metrics or {}).get(o.index, o.metrics)
            b = (baseline_metrics or {}).get(o.index, o.reference_metrics)
            found = _metric_vs_baseline(o, m, b)
            if found is not None and max_drop is not None:
                key, value, base_value = found
                labelled = key in ("accuracy", "r2") and key in (m or {})
                c.check(o, "metric_drop", f"drop of {key}", base_value - value, float(max_drop), vs, False,
                        detail=f"{_fmt(value)} against {_fmt(base_value)}" if labelled
                        else f"no labels: {key} {_fmt(value)} to the baseline's own outputs")
            _collapse(c, o, vs, m, b)
    return GateResult(passed=not c.reasons, reasons=c.reasons, checked=c.checked,
                      fixes=_fixes(c.failed, precision, compressed, detection) if c.reasons else [])


def summary_line(fid: Fidelity) -> str:
    """One log line: the deciding measures of each output."""
    parts = []
    for o in fid.outputs:
        bits = [f"cos {o.cosine:.4f}", f"sqnr {o.sqnr_db:.1f} dB"]
        if o.agreement is not None:
            bits.insert(0, f"agree {o.agreement:.3f}")
        if o.detection_f1 is not None:
            bits.insert(0, f"det-F1 {o.detection_f1:.3f} ({o.matched_detections}/{o.reference_detections})")
        if o.dead_positions:
            bits.append(f"dead {o.dead_positions}/{o.positions}")
        if o.nonfinite:
            bits.append(f"{o.nonfinite} non-finite")
        parts.append(f"{o.name}: " + " ".join(bits))
    return f"vs {fid.reference}: " + " | ".join(parts)
