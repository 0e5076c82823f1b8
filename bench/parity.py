"""Numeric parity of an exported model against the model it came from."""

from __future__ import annotations

import numpy as np

from compress.core.report_schema import Parity
from compress.core.errors import NonFiniteOutputError


def _nonfinite(a: np.ndarray) -> str | None:
    """``"3 NaN and 1 infinite value(s) of 400 (first in sample 2)"`` for a (samples, values) array, or None."""
    finite = np.isfinite(a)
    if finite.all():
        return None
    nan = int(np.isnan(a).sum())
    inf = int(a.size - finite.sum()) - nan
    sample = int(np.argmin(finite.all(axis=1))) if a.ndim == 2 else 0
    return f"{nan} NaN and {inf} infinite value(s) of {a.size:,} (first in sample {sample})"


def compare_outputs(
    reference: np.ndarray,
    outputs: np.ndarray,
    reference_name: str,
    task: str,
    tolerance: float | None = None,
    min_agreement: float | None = None,
) -> Parity:
    """Compare the primary outputs of two models on the same inputs.

    Passes when the max abs diff is within ``tolerance`` (if given) and the share of equal
    predictions is at least ``min_agreement`` (classification, if given).

    Raises:
        NonFiniteOutputError: Either side holds NaN or infinite values: no difference of them
            means anything (``diff.max() > tol`` is False for NaN, so such a model would pass).
        ValueError: The shapes differ.
    """
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    out = outputs.reshape(len(outputs), -1).astype(np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: reference {reference.shape}, artifact {outputs.shape}")
    bad = [f"{who} gives {text}" for who, text in (("the artifact", _nonfinite(out)), (reference_name, _nonfinite(ref)))
           if text is not None]
    if bad:
        raise NonFiniteOutputError(f"parity against {reference_name}: " + "; ".join(bad)
                                   + " on the same inputs (NaN or inf in outputs: the model is broken on these inputs)")
    diff = np.abs(ref - out)
    agree = float((ref.argmax(1) == out.argmax(1)).mean()) if task == "classification" else None
    num = (ref * out).sum(1)
    ref_norm, out_norm = np.linalg.norm(ref, axis=1), np.linalg.norm(out, axis=1)
    den = ref_norm * out_norm
    # a zero row matches only a zero row: an artifact that outputs zeros must not score 1
    same_zero = ((ref_norm == 0) & (out_norm == 0)).astype(np.float64)
    cos = float(np.mean(np.divide(num, den, out=same_zero, where=den > 0)))
    passed = None
    if tolerance is not None or min_agreement is not None:
        passed = True
        if tolerance is not None and diff.max() > tolerance:
            passed = False
        if min_agreement is not None and agree is not None and agree < min_agreement:
            passed = False
    return Parity(
        reference=reference_name,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        agreement=agree,
        cosine=cos,
        tolerance=tolerance,
        passed=passed,
        samples=int(len(ref)),
    )
