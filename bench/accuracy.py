"""Task metrics on the eval split, and agreement with the baseline model."""

from __future__ import annotations

from typing import Any

import numpy as np


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(logits: np.ndarray, y: np.ndarray, num_classes: int | None = None) -> dict[str, Any]:
    """Accuracy, macro F1, confusion matrix and (binary) ROC-AUC."""
    pred = logits.argmax(axis=1)
    k = max(int(num_classes or 0), logits.shape[1], int(y.max()) + 1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y.astype(np.int64), pred), 1)
    tp = np.diag(cm).astype(np.float64)
    prec = np.divide(tp, cm.sum(axis=0), out=np.zeros(k), where=cm.sum(axis=0) > 0)
    rec = np.divide(tp, cm.sum(axis=1), out=np.zeros(k), where=cm.sum(axis=1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    present = cm.sum(axis=1) > 0
    out: dict[str, Any] = {
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "confusion_matrix": cm.tolist(),
    }
    if logits.shape[1] == 2:
        out["roc_auc"] = roc_auc(_softmax(logits)[:, 1], y)
    return out


def roc_auc(score: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula."""
    pos, neg = score[y == 1], score[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    err = pred.reshape(len(y), -1) - y.reshape(len(y), -1)
    mse = float((err**2).mean())
    return {"mae": float(np.abs(err).mean()), "mse": mse, "rmse": float(np.sqrt(mse))}


def _normalize(e: np.ndarray) -> np.ndarray:
    e = e.reshape(len(e), -1).astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def embedding_metrics(emb: np.ndarray, ref: np.ndarray, k: int = 10, max_queries: int = 500) -> dict[str, Any]:
    """Fidelity of embeddings to the reference model's: cosine, top-k overlap, nDCG@k, MRR.

    Each of the first ``max_queries`` items is a query against all items; the reference
    model's ranking is the ground truth.
    """
    a, b = _normalize(emb), _normalize(ref)
    cos = (a * b).sum(axis=1)
    n = len(a)
    q = min(n, max_queries)
    k = min(k, n - 1) if n > 1 else 1
    sim_a, sim_b = a[:q] @ a.T, b[:q] @ b.T
    for i in range(q):
        sim_a[i, i] = sim_b[i, i] = -np.inf
    top_a = np.argsort(-sim_a, axis=1)[:, :k]
    top_b = np.argsort(-sim_b, axis=1)[:, :k]
    overlap, ndcg, mrr = [], [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for i in range(q):
        truth = {int(j): k - r for r, j in enumerate(top_b[i])}  # graded relevance from the reference rank
        gains = np.array([truth.get(int(j), 0) for j in top_a[i]], dtype=np.float64)
        ideal = np.array(sorted(truth.values(), reverse=True), dtype=np.float64)
        ndcg.append(float((gains * discounts).sum() / (ideal * discounts).sum()))
        overlap.append(len(set(top_a[i].tolist()) & set(top_b[i].tolist())) / k)
        first = int(top_b[i][0])
        hits = np.where(top_a[i] == first)[0]
        mrr.append(1.0 / (hits[0] + 1) if hits.size else 0.0)
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        f"top{k}_overlap": float(np.mean(overlap)),
        f"ndcg@{k}": float(np.mean(ndcg)),
        "mrr": float(np.mean(mrr)),
    }


def agreement(outputs: np.ndarray, reference: np.ndarray, task: str) -> float | None:
    """Share of inputs where the model decides like the reference (classification only)."""
    if task != "classification":
        return None
    return float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean())


def task_metrics(
    task: str,
    outputs: np.ndarray,
    y: np.ndarray | None,
    reference: np.ndarray | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Metrics of the primary output for the recipe's task.

    ``accuracy`` is the headline number everywhere: classification accuracy, negative
    RMSE for regression, mean cosine to the reference for embeddings.
    """
    m: dict[str, Any] = {}
    if task == "classification" and y is not None:
        m.update(classification_metrics(outputs, y, num_classes))
    elif task == "regression" and y is not None:
        m.update(regression_metrics(outputs, y))
        m["accuracy"] = -m["rmse"]
    elif task == "embedding":
        if reference is not None:
            m.update(embedding_metrics(outputs, reference))
            m["accuracy"] = m["cosine_mean"]
    if reference is not None:
        ag = agreement(outputs, reference, task)
        if ag is not None:
            m["agreement"] = ag
    return m
