"""The parity statistic of an artifact against its reference."""

from __future__ import annotations


def test_parity_cosine_of_zero_outputs_is_zero() -> None:
    """An artifact that outputs zeros (a broken int8 model) has cosine 0 to a real model, not 1."""
    import numpy as np

    from bench.parity import compare_outputs

    ref = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    broken = np.zeros_like(ref)
    assert abs(compare_outputs(ref, broken, "m", "embedding").cosine - 1 / 3) < 1e-12  # only the zero row matches
    assert abs(compare_outputs(ref, ref, "m", "embedding").cosine - 1.0) < 1e-12
