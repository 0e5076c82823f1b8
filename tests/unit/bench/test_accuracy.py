"""Task metrics."""

from __future__ import annotations

import numpy as np

from bench.accuracy import classification_metrics, embedding_metrics, regression_metrics, task_metrics


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
