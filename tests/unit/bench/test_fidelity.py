"""Fidelity per output and the gate: each way a broken artifact used to pass as ``ok``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.accuracy import classification_metrics, roc_auc, task_metrics
from bench.fidelity import evaluate_gate, measure_fidelity, summary_line
from compress.core.report_schema import SQNR_CAP_DB, Fidelity
from bench.outputs import resolve_outputs
from compress.intake.recipe import DetectionSpec, FidelityConfig, GateTolerance, OutputSpec
from bench.parity import compare_outputs

INT8 = FidelityConfig().int8
FP32 = FidelityConfig().fp32


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _detector(rng: np.random.Generator, n: int = 8, anchors: int = 300, classes: int = 3) -> np.ndarray:
    """A YOLOv8-style ``[N, 4 + C, A]`` output: boxes xywh in pixels, class scores in [0, 1]."""
    boxes = np.stack([rng.uniform(0, 640, (n, anchors)), rng.uniform(0, 640, (n, anchors)),
                      rng.uniform(10, 120, (n, anchors)), rng.uniform(10, 120, (n, anchors))], axis=1)
    scores = rng.uniform(0, 0.1, (n, classes, anchors))
    for i in range(n):
        for a in rng.choice(anchors, 5, replace=False):
            scores[i, rng.integers(classes), a] = rng.uniform(0.5, 0.95)
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def test_dead_class_head_detector_fails_although_cosine_is_one() -> None:
    rng = np.random.default_rng(0)
    ref = _detector(rng)
    # int8 with one output scale set by pixels: boxes on a 2.5 px grid, every class score 0
    out = ref.copy()
    out[:, :4] = np.round(out[:, :4] / 2.5) * 2.5
    out[:, 4:] = 0.0
    specs = resolve_outputs([ref], [OutputSpec(name="det", task="detection")], "detection", DetectionSpec())
    fid = measure_fidelity([ref], [out], specs, "onnx-fp32")
    o = fid.outputs[0]
    assert o.cosine > 0.99 and o.sqnr_db > 40  # both say "fine": 0.99999, 51 dB
    assert o.reference_detections == 40 and o.detections == 0
    assert o.detection_recall == 0.0 and o.detection_f1 == 0.0
    assert o.dead_positions == 3 and o.positions == 7  # the three class channels
    gate = evaluate_gate(fid, fid, INT8, "int8")
    assert not gate.passed
    assert any("output 'det': detection F1 0 < 0.8 vs onnx-fp32" in r and "0 of 40" in r for r in gate.reasons)
    assert any("dead fraction 0.4286 > 0" in r for r in gate.reasons)
    assert any("quantize.exclude" in f for f in gate.fixes)
    assert "det-F1 0.000 (0/40)" in summary_line(fid)


def test_detector_with_int8_noise_only_passes() -> None:
    rng = np.random.default_rng(1)
    ref = _detector(rng)
    out = ref.copy()
    out[:, :4] = np.round(out[:, :4] / 2.5) * 2.5
    out[:, 4:] = np.round(out[:, 4:] * 127) / 127
    specs = resolve_outputs([ref], None, "detection", DetectionSpec())
    fid = measure_fidelity([ref], [out], specs, "onnx-fp32")
    o = fid.outputs[0]
    assert o.detection_f1 == 1.0 and o.detection_mean_iou > 0.9 and o.detection_score_correlation > 0.99
    assert o.detection_count_ratio == 1.0 and o.dead_fraction == 0.0
    assert evaluate_gate(fid, fid, INT8, "int8").passed


def test_channels_last_xyxy_objectness_layout() -> None:
    rng = np.random.default_rng(2)
    ref = _detector(rng, classes=2).transpose(0, 2, 1)  # [N, A, 4 + C]
    xy = ref[:, :, :2]
    ref[:, :, 2:4] = xy + ref[:, :, 2:4]  # xyxy
    objectness = rng.uniform(0.8, 1.0, ref[:, :, :1].shape).astype(np.float32)
    ref = np.concatenate([ref[:, :, :4], objectness, ref[:, :, 4:]], axis=2)
    out = ref.copy()
    out[:, :, 4] = 0.1  # objectness dies: every score x 0.1 falls under 0.25
    layout = DetectionSpec(layout="channels_last", box_format="xyxy", objectness=True)
    specs = resolve_outputs([ref], [OutputSpec(name="yolo", task="detection", detection=layout)], "classification")
    o = measure_fidelity([ref], [out], specs, "fp32").outputs[0]
    assert o.reference_detections == 40 and o.detections == 0 and o.detection_f1 == 0.0
    assert o.dead_positions == 1 and o.positions == 7  # the objectness channel is stuck


def test_one_value_output_disagreement_fails_where_per_row_cosine_was_one() -> None:
    rng = np.random.default_rng(3)
    ref = (1 / (1 + np.exp(-rng.normal(0, 1.0, (200, 1))))).astype(np.float32)  # speech probability
    out = ref.copy()
    flip = rng.permutation(200)[:94]  # 47% of decisions flip
    out[flip] = 1 - out[flip]
    assert compare_outputs(ref, out, "onnx-fp32", "classification").cosine == 1.0  # the old, blind measure
    specs = resolve_outputs([ref], [OutputSpec(name="speech")], "classification")
    assert specs[0].probabilities and specs[0].decision == "threshold"
    fid = measure_fidelity([ref], [out], specs, "onnx-fp32")
    o = fid.outputs[0]
    assert o.cosine_per_sample_mean is None  # one value per sample: no per-row cosine
    assert abs(o.agreement - 0.53) < 0.01 and o.support is not None and len(o.support) == 2
    gate = evaluate_gate(fid, None, INT8, "int8")
    assert not gate.passed
    assert "output 'speech': decision agreement 0.53 < 0.99 vs onnx-fp32" in gate.reasons


def test_probability_outputs_are_compared_as_probabilities() -> None:
    rng = np.random.default_rng(4)
    ref = _softmax(rng.normal(0, 2, (100, 5))).astype(np.float32)
    noisy = np.clip(ref + rng.normal(0, 0.01, ref.shape), 0, None)
    out = (noisy / noisy.sum(axis=1, keepdims=True)).astype(np.float32)
    specs = resolve_outputs([ref], None, "classification")
    assert specs[0].probabilities
    o = measure_fidelity([ref], [out], specs, "fp32").outputs[0]
    diff = np.abs(ref.astype(np.float64) - out)
    # the probabilities themselves, not a softmax of them (that would shrink every diff)
    assert o.prob_max_abs_diff == pytest.approx(diff.max())
    assert o.prob_total_variation == pytest.approx(0.5 * diff.sum(axis=1).mean())
    # a binary probability head's ROC-AUC comes from its own column
    p = _softmax(rng.normal(0, 2, (100, 2)))
    y = (rng.random(100) < p[:, 1]).astype(int)
    assert classification_metrics(p, y, probabilities=True)["roc_auc"] == pytest.approx(roc_auc(p[:, 1], y))


def test_one_value_metrics_threshold_and_auc() -> None:
    score = np.array([-2.0, -0.5, 0.3, 1.5, 0.1, -1.0])
    y = np.array([0, 0, 1, 1, 0, 1])
    m = task_metrics("classification", score[:, None], y)
    assert m["accuracy"] == pytest.approx(4 / 6)  # decided at 0 (logits)
    assert m["roc_auc"] == pytest.approx(roc_auc(score, y))
    prob = 1 / (1 + np.exp(-score))
    assert task_metrics("classification", prob, y, probabilities=True)["accuracy"] == pytest.approx(4 / 6)
    assert task_metrics("classification", prob[:, None], y, reference=prob[:, None], probabilities=True)[
        "agreement"] == 1.0


def _three_heads(rng: np.random.Generator, n: int = 120) -> list[np.ndarray]:
    logits = rng.normal(0, 3, (n, 10)).astype(np.float32)
    risk = (1 / (1 + np.exp(-rng.normal(0, 2, (n, 1))))).astype(np.float32)
    box = rng.normal(50, 20, (n, 4)).astype(np.float32)
    return [logits, risk, box]


def test_three_outputs_only_the_broken_one_fails() -> None:
    rng = np.random.default_rng(5)
    ref = _three_heads(rng)
    out = [r + rng.normal(0, 1e-3, r.shape).astype(np.float32) for r in ref]
    out[2] = ref[2] * 0.5 + 25  # box head badly off, classification heads intact
    declared = [OutputSpec(name="digit"), OutputSpec(name="risk", task="classification"),
                OutputSpec(name="box", task="regression")]
    specs = resolve_outputs(ref, declared, "classification")
    assert [s.task for s in specs] == ["classification", "classification", "regression"]
    fid = measure_fidelity(ref, out, specs, "onnx-fp32")
    gate = evaluate_gate(fid, fid, INT8, "int8")
    assert not gate.passed and gate.reasons
    assert all(r.startswith("output 'box':") for r in gate.reasons)
    assert gate.checked["digit"]["agreement"]["passed"] and gate.checked["risk"]["sqnr_db"]["passed"]
    assert not gate.checked["box"]["sqnr_db"]["passed"]
    # weight 0: still measured and reported, not gated
    declared[2] = OutputSpec(name="box", task="regression", weight=0)
    fid0 = measure_fidelity(ref, out, resolve_outputs(ref, declared, "classification"), "onnx-fp32")
    gate0 = evaluate_gate(fid0, fid0, INT8, "int8")
    assert gate0.passed and not gate0.checked["box"]["sqnr_db"]["gated"]


def test_shape_mismatch_names_the_output() -> None:
    rng = np.random.default_rng(6)
    ref = _three_heads(rng)
    specs = resolve_outputs(ref, [OutputSpec(name="digit"), OutputSpec(name="risk"), OutputSpec(name="box")],
                            "classification")
    with pytest.raises(ValueError, match="output 'box'"):
        measure_fidelity(ref, [ref[0], ref[1], ref[2][:, :3]], specs, "x")


def test_nan_fails_with_its_count() -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(0, 1, (50, 10)).astype(np.float32)
    out = ref.copy()
    out[[1, 5, 9], [0, 3, 7]] = [np.nan, np.inf, np.nan]
    specs = resolve_outputs([ref], None, "classification")
    fid = measure_fidelity([ref], [out], specs, "onnx-fp32")
    assert fid.outputs[0].nonfinite == 3
    loose = GateTolerance()  # nothing else checked: non-finite values still fail
    for gate in (evaluate_gate(fid, None, loose, "fp16"), evaluate_gate(None, fid, loose, "fp16")):
        assert not gate.passed
        assert "output 'output_0': non-finite values 3 > 0 vs onnx-fp32" in gate.reasons
    assert '"NaN"' not in fid.model_dump_json() and "NaN" not in fid.model_dump_json()


def test_dead_columns() -> None:
    rng = np.random.default_rng(8)
    ref = rng.normal(0, 1, (64, 10)).astype(np.float32)
    out = ref.copy()
    out[:, 3] = 0.7  # stuck
    out[:, 7] = 0.0  # zeroed
    specs = resolve_outputs([ref], None, "regression")
    o = measure_fidelity([ref], [out], specs, "fp32").outputs[0]
    assert o.dead_fraction == pytest.approx(0.2) and o.dead_positions == 2 and o.positions == 10
    # without a parent (a pruned model), stuck positions are still judged, against the baseline
    pruned = evaluate_gate(None, measure_fidelity([ref], [out], specs, "pytorch"), FidelityConfig().compressed, "fp32")
    assert not pruned.passed and "dead fraction 0.2 > 0 vs pytorch" in pruned.reasons[0]
    gate = evaluate_gate(measure_fidelity([ref], [out], specs, "fp32"), None, GateTolerance(max_dead_fraction=0.0),
                         "int8")
    assert gate.reasons == ["output 'output_0': dead fraction 0.2 > 0 vs fp32 "
                            "(2 of 10 positions stuck where the reference varies)"]
    # a column that hardly moves (0.1% of the spread), quantized to one level, is not dead
    ref[:, 5] = 3.0 + 1e-3 * rng.normal(size=64)
    out = ref.copy()
    out[:, 5] = 3.0
    assert measure_fidelity([ref], [out], specs, "fp32").outputs[0].dead_positions == 0


def test_metric_drop_and_collapse_against_the_baseline() -> None:
    rng = np.random.default_rng(9)
    n = 400
    y = (rng.random(n) < 0.3).astype(int)
    base = np.stack([np.zeros(n), 3.0 * (y - 0.5) + rng.normal(0, 1, n)], axis=1).astype(np.float32)
    pruned = base.copy()
    pruned[:, 1] = -5.0  # never predicts the positive class, one score for all: ROC-AUC 0.5
    specs = resolve_outputs([base], [OutputSpec(name="risk")], "classification")
    fid = measure_fidelity([base], [pruned], specs, "pytorch", labels={0: y})
    o = fid.outputs[0]
    assert o.reference_metrics["roc_auc"] > 0.9 and o.metrics["roc_auc"] == 0.5
    assert o.predicted[1] == 0 and o.recall[1] == 0.0
    gate = evaluate_gate(None, fid, FidelityConfig().compressed, "fp32", compressed=True)
    assert not gate.passed
    text = "\n".join(gate.reasons)
    assert "output 'risk': drop of accuracy" in text and "> 0.05 vs pytorch" in text
    assert "class 1 is never found" in text and "ROC-AUC 0.5 <= 0.55" in text
    assert any("prune.ratio" in f for f in gate.fixes)
    # without labels, agreement with the baseline is the metric: drop = 1 - agreement
    nolabel = measure_fidelity([base], [pruned], specs, "pytorch")
    gate = evaluate_gate(None, nolabel, FidelityConfig().compressed, "fp32", compressed=True)
    assert any("drop of agreement" in r and "no labels" in r for r in gate.reasons)
    # metrics given explicitly win over the measured ones
    ok = evaluate_gate(None, fid, GateTolerance(max_metric_drop=0.05), "fp32",
                       baseline_metrics={0: {"accuracy": 0.9}}, metrics={0: {"accuracy": 0.88}})
    assert "metric_drop" in ok.checked["risk"] and ok.checked["risk"]["metric_drop"]["passed"]
    # or the baseline measured against itself
    itself = measure_fidelity([base], [base], specs, "pytorch", labels={0: y})
    with_base = evaluate_gate(None, fid, GateTolerance(max_metric_drop=0.05), "fp32", baseline=itself)
    assert with_base.checked["risk"]["metric_drop"]["value"] == pytest.approx(
        itself.outputs[0].metrics["accuracy"] - o.metrics["accuracy"])


def test_identical_outputs_pass_with_sqnr_at_the_cap() -> None:
    rng = np.random.default_rng(10)
    ref = _three_heads(rng)
    specs = resolve_outputs(ref, None, "classification")
    fid = measure_fidelity(ref, [r.copy() for r in ref], specs, "onnx-fp32", labels={0: rng.integers(0, 10, 120)})
    assert all(o.sqnr_db == SQNR_CAP_DB and o.cosine == pytest.approx(1.0) and o.dead_fraction == 0 for o in fid.outputs)
    assert fid.outputs[0].top_k == 5 and fid.outputs[0].top_k_agreement == 1.0
    assert fid.outputs[0].metrics == fid.outputs[0].reference_metrics
    gate = evaluate_gate(fid, fid, INT8, "int8")
    assert gate.passed and not gate.reasons and not gate.fixes
    assert Fidelity.model_validate_json(fid.model_dump_json()) == fid


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 20), st.integers(1, 8)),
              elements=st.floats(-1e3, 1e3, width=32)))
def test_x_vs_x_always_passes(x: np.ndarray) -> None:
    specs = resolve_outputs([x], None, "classification")
    fid = measure_fidelity([x], [x.copy()], specs, "ref")
    assert evaluate_gate(fid, fid, FP32, "fp32").passed
    assert fid.outputs[0].sqnr_db == SQNR_CAP_DB


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 20), st.integers(2, 8)),
              elements=st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-3)),
       st.floats(0.1, 10).filter(lambda c: abs(c - 1) > 1e-3))
def test_scaling_keeps_cosine_but_not_sqnr(x: np.ndarray, c: float) -> None:
    specs = resolve_outputs([x], None, "regression")
    o = measure_fidelity([x], [x * c], specs, "ref").outputs[0]
    assert o.cosine == pytest.approx(1.0)
    assert o.sqnr_db == pytest.approx(-20 * np.log10(abs(c - 1)), abs=1e-6)


def test_gate_tolerance_is_read_by_attribute() -> None:
    rng = np.random.default_rng(11)
    ref = rng.normal(0, 1, (30, 4))
    fid = measure_fidelity([ref], [ref + 0.3], resolve_outputs([ref], None, "regression"), "p")
    tol = SimpleNamespace(min_sqnr_db=30.0)  # any object with the fields; missing ones are not checked
    gate = evaluate_gate(fid, None, tol, "int8")
    assert not gate.passed and gate.reasons[0].startswith("output 'output_0': SQNR")
    assert " dB < 30 dB vs p" in gate.reasons[0]
