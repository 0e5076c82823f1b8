"""Task metrics on the eval split, and agreement with the baseline model."""

from __future__ import annotations

from typing import Any

import numpy as np


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def class_probabilities(scores: np.ndarray, probabilities: bool = False) -> np.ndarray:
    """Per-class probabilities ``[N, C]`` of a classification output.

    A one-value output (``[N]`` or ``[N, 1]``) becomes the two columns ``[1 - p, p]``.

    Args:
        scores: Logits, or probabilities when ``probabilities`` is set.
        probabilities: The values are probabilities already: used as they are, never softmaxed
            (or passed through a sigmoid) again.

    Returns:
        A float64 array with one row per sample.
    """
    flat = scores.reshape(len(scores), -1).astype(np.float64)
    if flat.shape[1] == 1:
        p = flat[:, 0] if probabilities else _sigmoid(flat[:, 0])
        return np.stack([1.0 - p, p], axis=1)
    return flat if probabilities else _softmax(flat)


def predicted_classes(scores: np.ndarray, probabilities: bool = False) -> np.ndarray:
    """The decision per sample: argmax, or for a one-value output the 0.5 (probability) / 0 (logit) threshold."""
    flat = scores.reshape(len(scores), -1)
    if flat.shape[1] == 1:
        return (flat[:, 0] > (0.5 if probabilities else 0.0)).astype(np.int64)
    return flat.argmax(axis=1)


def classification_metrics(
    logits: np.ndarray, y: np.ndarray, num_classes: int | None = None, probabilities: bool = False
) -> dict[str, Any]:
    """Accuracy, macro F1, confusion matrix and (binary) ROC-AUC.

    Args:
        logits: ``[N, C]`` class scores, or a one-value output (``[N]`` / ``[N, 1]``) decided by
            its threshold (0.5 for a probability, 0 for a logit).
        y: Integer labels.
        num_classes: At least this many classes in the confusion matrix.
        probabilities: The scores are probabilities already (not softmaxed again).

    Returns:
        ``accuracy``, ``macro_f1``, ``confusion_matrix`` and, for two classes or a one-value
        output, ``roc_auc`` (None when only one class is present in ``y``).
    """
    flat = logits.reshape(len(logits), -1)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    pred = predicted_classes(flat, probabilities)
    width = max(flat.shape[1], 2)
    k = max(int(num_classes or 0), width, int(y.max()) + 1 if len(y) else 0)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
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
    if flat.shape[1] == 1:
        # the raw score ranks samples exactly as its sigmoid would
        out["roc_auc"] = roc_auc(flat[:, 0].astype(np.float64), y)
    elif flat.shape[1] == 2:
        out["roc_auc"] = roc_auc(class_probabilities(flat, probabilities)[:, 1], y)
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
    """Mean absolute error, mean squared error and its root."""
    err = pred.reshape(len(y), -1) - y.reshape(len(y), -1)
    mse = float((err**2).mean())
    return {"mae": float(np.abs(err).mean()), "mse": mse, "rmse": float(np.sqrt(mse))}


def r2_score(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Coefficient of determination of ``pred`` for ``target`` (1 is exact, 0 is the per-column mean).

    Unit-free, so that a loss of it can be bounded like an accuracy drop. None when the
    target does not vary.
    """
    t = target.reshape(len(target), -1).astype(np.float64)
    p = pred.reshape(len(t), -1).astype(np.float64)
    total = float(((t - t.mean(axis=0)) ** 2).sum())
    if total <= 0:
        return None
    return 1.0 - float(((t - p) ** 2).sum()) / total


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


def agreement(outputs: np.ndarray, reference: np.ndarray, task: str, probabilities: bool = False) -> float | None:
    """Share of inputs where the model decides like the reference (classification only).

    A one-value output decides by its threshold, a wider one by argmax.
    """
    if task != "classification":
        return None
    return float((predicted_classes(outputs, probabilities) == predicted_classes(reference, probabilities)).mean())


def task_metrics(
    task: str,
    outputs: np.ndarray,
    y: np.ndarray | None,
    reference: np.ndarray | None = None,
    num_classes: int | None = None,
    probabilities: bool = False,
) -> dict[str, Any]:
    """Metrics of one output for its task.

    ``accuracy`` is the headline number everywhere: classification accuracy, negative
    RMSE for regression, mean cosine to the reference for embeddings.

    Args:
        task: classification, regression, embedding (detection has no label metric here).
        outputs: The output of the model being scored.
        y: Labels, or None.
        reference: The reference model's same output, for agreement and embedding fidelity.
        num_classes: At least this many classes (classification).
        probabilities: The output holds probabilities already (never softmaxed again).

    Returns:
        A dict of metric name to value.
    """
    m: dict[str, Any] = {}
    if task == "classification" and y is not None:
        m.update(classification_metrics(outputs, y, num_classes, probabilities))
    elif task == "regression" and y is not None:
        m.update(regression_metrics(outputs, y))
        m["accuracy"] = -m["rmse"]
        r2 = r2_score(outputs, y)
        if r2 is not None:
            m["r2"] = r2
    elif task == "embedding":
        if reference is not None:
            m.update(embedding_metrics(outputs, reference))
            m["accuracy"] = m["cosine_mean"]
    if reference is not None:
        ag = agreement(outputs, reference, task, probabilities)
        if ag is not None:
            m["agreement"] = ag
    return m
