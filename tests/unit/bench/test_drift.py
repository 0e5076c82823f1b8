"""PSI, the binned KS statistic and the verdict, on data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.drift import Thresholds, compare, ks_binned, ks_critical, psi, psi_terms
from bench.fingerprint import make_fingerprint
from compress.core.errors import InputFileError


def test_identical_distributions_score_zero() -> None:
    counts = [3, 10, 20, 7, 0, 1]
    assert psi(counts, counts) == 0.0 and ks_binned(counts, counts) == 0.0
    assert psi(counts, [2 * c for c in counts]) == 0.0  # shares, not counts


def test_psi_and_ks_of_a_known_shift() -> None:
    # shares 0.5/0.5 -> 0.25/0.75: PSI = 0.25 ln 2 + 0.25 ln 1.5, KS = |0.5 - 0.25|
    assert psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-12)
    assert ks_binned([50, 50], [25, 75]) == pytest.approx(0.25)
    # the binned KS compares cumulative shares over every bucket but the last
    assert ks_binned([10, 0, 0, 10], [0, 10, 10, 0]) == pytest.approx(0.5)


def test_an_empty_bucket_counts_as_a_share_of_epsilon() -> None:
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi([100, 0], [50, 50]) == pytest.approx(expected, abs=1e-12)
    assert (psi_terms([100, 0], [50, 50]) >= 0).all()


def test_ks_critical_value_is_the_asymptotic_two_sample_one() -> None:
    # c(0.05) = 1.3581 (Kolmogorov tables); n = m = 100
    assert ks_critical(100, 100, 0.05, 1) == pytest.approx(1.3581 * math.sqrt(0.02), rel=1e-4)
    assert ks_critical(100, 100, 0.05, 10) == pytest.approx(ks_critical(100, 100, 0.005, 1))


@pytest.fixture(scope="module")
def image_fingerprint() -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.1, size=(600, 4, 4, 3)).astype(np.float32)  # NHWC, 3 channels
    w = rng.standard_normal((48, 5))
    return make_fingerprint([{"name": "img", "batch_axis": 0}], [x], [{"name": "logits", "classification": True}],
                            [(x - 0.5).reshape(600, -1) @ w], layout="NHWC", labels=list("abcde")), w


def test_same_distribution_is_no_drift(image_fingerprint) -> None:
    fp, w = image_fingerprint
    x = np.random.default_rng(1).normal(0.5, 0.1, size=(600, 4, 4, 3)).astype(np.float32)
    report = compare(fp, [x], [(x - 0.5).reshape(600, -1) @ w])
    assert report.verdict == "no drift" and report.moved == [] and len(report.checks) == 3 + 48 + 2


def test_a_shifted_channel_is_named_and_ranked_first(image_fingerprint) -> None:
    fp, _ = image_fingerprint
    x = np.random.default_rng(2).normal(0.5, 0.1, size=(600, 4, 4, 3)).astype(np.float32)
    x[..., 1] += 0.1  # channel 1 only, one standard deviation
    report = compare(fp, [x])
    assert report.verdict == "drift"
    assert report.moved[0].name == "channel 1" or report.moved[0].name.startswith("cell c1 ")
    assert [c.psi for c in report.moved] == sorted((c.psi for c in report.moved), reverse=True)
    assert {c.name for c in report.moved if c.kind == "channel"} == {"channel 1"}
    assert all(c.name.startswith("cell c1 ") for c in report.moved if c.kind == "cell")


def test_classes_that_moved_are_named(image_fingerprint) -> None:
    fp, w = image_fingerprint
    x = np.random.default_rng(3).normal(0.5, 0.1, size=(600, 4, 4, 3)).astype(np.float32)
    y = (x - 0.5).reshape(600, -1) @ w
    keep = np.argmax(y, axis=1) <= 1  # only the samples the model calls a or b
    report = compare(fp, [x[keep]], [y[keep]])
    prior = next(c for c in report.checks if c.kind == "class_prior")
    assert prior.status == "drift" and report.verdict == "drift"
    assert {m.label for m in report.classes} == set("abcde")
    assert {m.label for m in report.classes if m.new_share > m.reference_share} == {"a", "b"}


def test_thresholds_decide_the_verdict(image_fingerprint) -> None:
    fp, _ = image_fingerprint
    x = np.random.default_rng(4).normal(0.5, 0.1, size=(600, 4, 4, 3)).astype(np.float32)
    x[..., 0] += 0.03
    loose = compare(fp, [x], thresholds=Thresholds(psi_drift=10.0, ks_threshold=1.0))
    strict = compare(fp, [x], thresholds=Thresholds(psi_moderate=0.001, psi_drift=0.002, ks_alpha=0.5))
    assert loose.verdict == "no drift" and strict.verdict == "drift"


def test_data_that_does_not_fit_is_refused(image_fingerprint) -> None:
    fp, _ = image_fingerprint
    with pytest.raises(InputFileError, match=r"input 'img'.*shape \(4, 4, 3\).*\(4, 3, 3\)"):
        compare(fp, [np.zeros((5, 4, 3, 3), np.float32)])
    with pytest.raises(InputFileError, match="1 input"):
        compare(fp, [])


def test_overrides_replace_the_fingerprints_thresholds() -> None:
    from bench.drift import thresholds_of

    fp = {"thresholds": {"psi_moderate": 0.1, "psi_drift": 0.3, "ks_alpha": 0.05, "unknown": 1}}
    assert thresholds_of(fp) == Thresholds(0.1, 0.3, 0.05, None)
    assert thresholds_of(fp, {"psi_drift": 0.05}) == Thresholds(0.05, 0.05, 0.05, None)
    assert thresholds_of(fp, {"ks_threshold": 0.2}).ks_threshold == 0.2
    with pytest.raises(InputFileError, match="not a number"):
        thresholds_of({"thresholds": {"psi_drift": "high"}})
