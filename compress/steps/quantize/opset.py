"""Bring an older ONNX model (opset < 13) to an opset that per-channel quantization needs.

``DequantizeLinear`` gained its ``axis`` attribute (per-channel scales) in opset 13; an
opset-11/12 model quantized per channel is invalid and onnxruntime refuses to load it. The
model is upgraded with ``onnx.version_converter`` and the upgrade is checked: the upgraded
model must compute what the original computes on the calibration inputs (onnxruntime on
both). Where the converter fails, the caller quantizes per tensor instead (no ``axis``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PER_CHANNEL_OPSET = 13
# The version converter rewrites attributes into inputs (Squeeze axes, Split sizes...): the
# arithmetic is unchanged, so outputs agree to float rounding.
PARITY_RTOL = 1e-4


@dataclass
class OpsetUpgrade:
    """What happened to the model's opset.

    Args:
        from_opset: The model's default-domain opset.
        to_opset: The opset of the model that is quantized (``from_opset`` when unchanged).
        upgraded: True when a converted model was written.
        error: Why the conversion failed (the model is then quantized per tensor).
        max_abs_diff: Largest output difference upgraded vs original on the parity inputs.
        max_rel_diff: ``max_abs_diff`` over the largest reference magnitude.
    """

    from_opset: int
    to_opset: int
    upgraded: bool = False
    error: str | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class UpgradeParityError(ValueError):
    """The upgraded model computes something else than the original."""


def model_opset(model: Any) -> int:
    """The default (``ai.onnx``) domain's opset of a ModelProto."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def run_outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of a model over the feeds (onnxruntime, CPU)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [sess.run(None, feed) for feed in feeds]


def compare(ref: list[list[np.ndarray]], test: list[list[np.ndarray]]) -> tuple[float, float]:
    """(max abs diff, max abs diff / largest reference magnitude) over every output."""
    abs_diff, scale = 0.0, 0.0
    for r_batch, t_batch in zip(ref, test):
        for r, t in zip(r_batch, t_batch):
            r64, t64 = np.asarray(r, np.float64), np.asarray(t, np.float64)
            if r64.shape != t64.shape:
                return float("inf"), float("inf")
            if r64.size:
                abs_diff = max(abs_diff, float(np.nanmax(np.abs(r64 - t64))))
                scale = max(scale, float(np.nanmax(np.abs(r64))))
    return abs_diff, abs_diff / scale if scale > 0 else abs_diff


def upgrade_opset(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]],
                  target: int = PER_CHANNEL_OPSET) -> OpsetUpgrade:
    """Write ``src`` converted to opset ``target`` to ``dst`` when its opset is older.

    Args:
        src: The float ONNX model.
        dst: Where the upgraded model goes (only written when an upgrade happens).
        feeds: Inputs on which the upgraded model must agree with the original.
        target: The opset to reach.

    Returns:
        What was done; ``upgraded`` False with ``error`` set when the converter failed.

    Raises:
        UpgradeParityError: The converter succeeded but the upgraded model's outputs differ.
    """
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    current = model_opset(model)
    result = OpsetUpgrade(from_opset=current, to_opset=current)
    if current >= target:
        return result
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
        onnx.save(converted, str(dst))
    except Exception as e:  # noqa: BLE001  (the caller falls back to per-tensor quantization)
        dst.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result.error = f"{type(e).__name__}: {first}"[:300]
        return result
    if feeds:
        try:
            abs_diff, rel_diff = compare(run_outputs(src, feeds), run_outputs(dst, feeds))
        except Exception as e:  # noqa: BLE001  an upgraded model onnxruntime cannot run is a failed upgrade
            dst.unlink(missing_ok=True)
            result.error = f"onnxruntime cannot run the upgraded model: {type(e).__name__}: {str(e)[:200]}"
            return result
        result.max_abs_diff, result.max_rel_diff = abs_diff, rel_diff
        if not rel_diff <= PARITY_RTOL:
            raise UpgradeParityError(
                f"the model upgraded from opset {current} to {target} differs from the original on the calibration "
                f"inputs (max abs diff {abs_diff:.3g}, {rel_diff:.2%} of the output range); convert the model to "
                f"opset {target}+ yourself (e.g. re-export it), or quantize it with per_channel: false")
    result.to_opset = target
    result.upgraded = True
    return result
