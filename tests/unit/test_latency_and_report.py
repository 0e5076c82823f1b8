"""Latency statistics and the report schema."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.accuracy import classification_metrics, embedding_metrics, regression_metrics, task_metrics
from bench.latency import summarize
from bench.report import render_markdown
from compress.core.report_schema import ArtifactReport, Report, TargetResult


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1000), min_size=2, max_size=200))
def test_stats_are_ordered(times: list[float]) -> None:
    s = summarize(times, threads=1)
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert s.ci95[0] <= s.p50 + 1e-9 and s.p50 - 1e-9 <= s.ci95[1]
    assert s.runs == len(times)


def test_noise_flag() -> None:
    rng = np.random.default_rng(0)
    assert not summarize(1.0 + 0.001 * rng.standard_normal(500), threads=1).noisy
    noisy = summarize(rng.exponential(1.0, 30), threads=1)
    assert noisy.noisy and "CI" in noisy.noise_reason
    assert summarize([1.0] * 50, threads=1, loadavg=3.0, cores=2).noisy


def test_classification_metrics() -> None:
    logits = np.array([[2, 0], [0, 2], [2, 0], [0, 2]], dtype=np.float32)
    m = classification_metrics(logits, np.array([0, 1, 1, 1]))
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert 0 < m["macro_f1"] < 1 and m["roc_auc"] is not None


def test_regression_and_embedding_metrics() -> None:
    m = regression_metrics(np.array([1.0, 2.0]), np.array([1.0, 4.0]))
    assert m["mae"] == 1.0 and m["mse"] == 2.0
    e = np.random.default_rng(0).standard_normal((50, 16))
    same = embedding_metrics(e, e)
    assert abs(same["cosine_mean"] - 1) < 1e-9 and same["ndcg@10"] == 1.0 and same["mrr"] == 1.0
    noisy = embedding_metrics(e + 0.5 * np.random.default_rng(1).standard_normal(e.shape), e)
    assert noisy["cosine_mean"] < 1 and noisy["ndcg@10"] < 1


def test_agreement() -> None:
    ref = np.eye(3)[[0, 1, 2, 0]]
    out = np.eye(3)[[0, 1, 1, 0]]
    assert task_metrics("classification", out, np.array([0, 1, 2, 0]), ref)["agreement"] == 0.75


def test_report_round_trip_and_markdown() -> None:
    stats = summarize([1.0, 1.1, 0.9], threads=1)
    r = Report(recipe={"name": "x"}, created="now", artifacts=[ArtifactReport(
        name="onnx-fp32", format="onnx", path="a.onnx", size_bytes=10, accuracy=0.9,
        targets=[TargetResult(target="local", how="measured", device="cpu", threads=1, latency_ms=stats)])])
    again = Report.model_validate_json(r.model_dump_json())
    t = again.artifacts[0].targets[0]
    assert t.latency_ms.p50 == stats.p50 and t.how == "measured"
    md = render_markdown(again)
    assert "onnx-fp32" in md and "measured" in md
