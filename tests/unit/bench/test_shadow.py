"""bench.shadow on synthetic outputs: known flips, ECE computed by hand, the worst samples, the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from bench.outputs import resolve_outputs
from bench.shadow import (
    Thresholds,
    compare_outputs,
    expected_calibration_error,
    match_outputs,
    summary_line,
    verdict,
    worst_samples,
)
from bench.shadow_report import render_shadow_markdown


def _probs(decided: list[int], conf: list[float], k: int = 3) -> np.ndarray:
    """Probability rows: ``conf`` on the decided class, the rest spread evenly."""
    p = np.zeros((len(decided), k))
    for i, (d, c) in enumerate(zip(decided, conf)):
        p[i] = (1 - c) / (k - 1)
        p[i, d] = c
    return p.astype(np.float32)


def test_ece_by_hand() -> None:
    # bin (0.6, 0.6667]: conf 0.62, 0.65 -> mean 0.635, accuracy 1/2; bin (0.9333, 1]: conf 0.95, 0.99, 1.0 ->
    # mean 0.98, accuracy 2/3. ECE = 2/5 * |0.5 - 0.635| + 3/5 * |0.6667 - 0.98|
    conf = np.array([0.62, 0.65, 0.95, 0.99, 1.0])
    correct = np.array([1, 0, 1, 1, 0])
    want = 2 / 5 * abs(0.5 - 0.635) + 3 / 5 * abs(2 / 3 - 0.98)
    assert expected_calibration_error(conf, correct) == pytest.approx(want, abs=1e-12)
    assert expected_calibration_error(np.full(4, 1.0), np.ones(4)) == 0.0  # perfectly confident and right
    assert expected_calibration_error(np.array([0.0]), np.array([0])) == 0.0  # a confidence of 0 is binned too
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


def test_known_flips_confusion_and_confidence() -> None:
    base = _probs([0, 0, 1, 1, 2, 2, 2, 2], [0.9] * 8)
    cand = _probs([0, 1, 1, 1, 2, 0, 0, 2], [0.9, 0.6, 0.9, 0.9, 0.9, 0.7, 0.8, 0.9])
    specs = resolve_outputs([base], None, "classification", names=["probs"])
    assert specs[0].probabilities and specs[0].decision == "argmax"
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    (m,), flips, div = compare_outputs([base], [cand], specs, {0: y})
    assert m["flips"] == 3 and m["flip_rate"] == pytest.approx(3 / 8) and m["agreement"] == pytest.approx(5 / 8)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [2, 0, 2]]
    by = {b["class"]: (b["support"], b["flips"]) for b in m["flips_by_class"]}
    assert by == {0: (2, 1), 1: (2, 0), 2: (4, 2)}
    assert m["top_flips"][0] == {"from": 2, "to": 0, "count": 2}
    assert flips.tolist() == [0, 1, 0, 0, 0, 1, 1, 0]
    # the candidate's probability of the baseline's decision: 0.2 (of 0.6 spread), 0.15, 0.1 on the flips
    shift = np.array([0, 0.9 - 0.2, 0, 0, 0, 0.9 - 0.15, 0.9 - 0.1, 0])
    assert m["confidence"]["shift_mean"] == pytest.approx(shift.mean(), abs=1e-6)
    assert m["confidence"]["candidate_mean"] == pytest.approx(np.mean([0.9, 0.6, 0.9, 0.9, 0.9, 0.7, 0.8, 0.9]),
                                                               abs=1e-6)
    # ECE of the candidate with the baseline's decisions as labels, by hand
    conf_c = np.array([0.9, 0.6, 0.9, 0.9, 0.9, 0.7, 0.8, 0.9])
    agree = flips == 0
    assert m["confidence"]["ece_vs_baseline"] == pytest.approx(expected_calibration_error(conf_c, agree))
    lab = m["labels"]
    assert lab["baseline_accuracy"] == pytest.approx(7 / 8) and lab["candidate_accuracy"] == pytest.approx(4 / 8)
    assert lab["accuracy_drop"] == pytest.approx(3 / 8)
    assert lab["baseline_ece"] == pytest.approx(abs(7 / 8 - 0.9))  # every confidence in one bin
    # worst: the flips first, the largest divergence first among them
    worst = worst_samples(flips, div, 4)
    assert set(worst[:3].tolist()) == {1, 5, 6} and div[worst[0]] >= div[worst[1]] >= div[worst[2]]


def test_threshold_output_and_logits() -> None:
    """A one-value logit decides at 0; a sign change is a flip."""
    base = np.array([[2.0], [-1.0], [0.5], [-3.0]], dtype=np.float32)
    cand = np.array([[1.5], [0.2], [0.4], [-2.0]], dtype=np.float32)
    specs = resolve_outputs([base], None, "classification")
    assert specs[0].decision == "threshold" and not specs[0].probabilities
    (m,), flips, _ = compare_outputs([base], [cand], specs)
    assert m["flips"] == 1 and flips.tolist() == [0, 1, 0, 0] and m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert "labels" not in m


def test_regression_output_and_identical_models() -> None:
    base = np.arange(12, dtype=np.float32).reshape(4, 3)
    specs = resolve_outputs([base], None, "regression")
    (m,), flips, div = compare_outputs([base], [base.copy()], specs)
    assert m["decision"] is None and m["rel_error"] == 0 and m["cosine"] == pytest.approx(1.0)
    assert worst_samples(flips, div).tolist() == []  # nothing disagrees: no worst samples
    (m,), _, div = compare_outputs([base], [base + np.array([0, 0, 1, 0])[:, None]], specs)
    assert m["max_abs_diff"] == 1.0 and div.argmax() == 2
    v = verdict([m], Thresholds(max_rel_error=0.01))
    assert not v["passed"] and "rel_error" in v["reasons"][0]


def test_verdict_lists_every_threshold_with_its_value() -> None:
    base = _probs([0] * 50 + [1] * 50, [0.9] * 100)
    cand = base.copy()
    cand[:2] = _probs([1, 1], [0.9, 0.9])  # 2 flips of 100: 2%
    specs = resolve_outputs([base], None, "classification", names=["p"])
    measures, _, _ = compare_outputs([base], [cand], specs, {0: np.zeros(100, dtype=np.int64)})
    strict = verdict(measures, Thresholds())
    assert not strict["passed"]
    assert strict["reasons"] == ["output 'p': flip_rate 0.02 > limit 0.01"]
    loose = verdict(measures, Thresholds(max_flip_rate=0.05, max_accuracy_drop=0.05, max_ece_increase=0.5,
                                         max_confidence_shift=0.1))
    assert loose["passed"]
    assert [c["measure"] for c in loose["checks"]] == ["nonfinite", "flip_rate", "confidence_shift", "accuracy_drop",
                                                       "ece_increase"]
    flip = loose["checks"][1]
    assert flip == {"output": "p", "measure": "flip_rate", "value": 0.02, "limit": 0.05, "passed": True}


def test_nonfinite_candidate_fails_whatever_the_thresholds() -> None:
    base = _probs([0, 1], [0.9, 0.9])
    cand = base.copy()
    cand[0, 0] = np.nan
    specs = resolve_outputs([base], None, "classification")
    measures, _, _ = compare_outputs([base], [cand], specs)
    v = verdict(measures, Thresholds(max_flip_rate=None))
    assert not v["passed"] and "nonfinite" in v["reasons"][0]


def test_outputs_match_by_name_else_by_position() -> None:
    assert match_outputs(["a", "b"], ["b", "a"]) == ([1, 0], "name")
    assert match_outputs(["logits"], ["serving_default_output_0"]) == ([0], "position")
    with pytest.raises(ValueError, match="1 output"):
        match_outputs(["a"], ["a", "b"])


def test_shape_and_label_mismatches_are_named() -> None:
    base = _probs([0, 1], [0.9, 0.9])
    specs = resolve_outputs([base], None, "classification", names=["p"])
    with pytest.raises(ValueError, match="output 'p'.*shape"):
        compare_outputs([base], [base[:, :2]], specs)
    with pytest.raises(ValueError, match="3 labels for 2 samples"):
        compare_outputs([base], [base], specs, {0: np.zeros(3)})


def test_markdown_and_summary_line() -> None:
    base = _probs([0, 1, 2, 2], [0.9] * 4)
    cand = _probs([0, 1, 2, 1], [0.9] * 4)
    specs = resolve_outputs([base], None, "classification", names=["p"])
    measures, flips, div = compare_outputs([base], [cand], specs)
    result = {"baseline": {"name": "a", "source": "file a.onnx", "format": "onnx"},
              "candidate": {"name": "b", "source": "file b.tflite", "format": "tflite"},
              "outputs_matched_note": "matched by position", "outputs": measures,
              "verdict": verdict(measures, Thresholds()),
              "worst": {"indices": worst_samples(flips, div).tolist(), "ranked_by": "flips"}, "latency": None}
    md = render_shadow_markdown(result)
    assert "Verdict: **FAIL**" in md and "| p | flip_rate | 0.25 | <= 0.01 | **fail** |" in md
    assert "2 -> 1 (1)" in md and "Indices: 3" in md and "not measured" in md
    assert summary_line(result).startswith("shadow FAIL: p: agreement 0.7500, 1 flip(s) of 4")
