"""Parity of a model's outputs on another machine against the same model run here.

The SSH and emulated targets both pull the outputs the board computed back and compare
them with the host runtime's outputs on the same inputs: float models must agree within
an absolute tolerance, integer-quantized ones must pick the same class on every input
(their rounding may legitimately differ by one quantization step between kernels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.report_schema import Parity

FLOAT_ATOL = 1e-4
INT8_MIN_AGREEMENT = 1.0
# Integer models whose output is not a class score: cosine similarity is the check.
INT8_MIN_COSINE = 0.999

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
              "DynamicQuantizeLinear", "QLinearAdd", "QLinearMul"}


def is_quantized(model: Path) -> bool:
    """Whether a model computes in integers (QDQ / QLinear ONNX, int8 TFLite tensors)."""
    model = Path(model)
    if model.suffix == ".tflite":
        from bench.runtime import open_model

        session = open_model(model)
        details = session._it.get_tensor_details()
        return any(np.dtype(d["dtype"]).kind in "iu" and d.get("quantization", (0.0, 0))[0] for d in details)
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return any(n.op_type in _QUANT_OPS for n in graph.node)


def host_outputs(model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The model's outputs computed by this machine's runtime."""
    from bench.runtime import open_model, predict

    return predict(open_model(model), inputs)


def crosscheck(model: Path, reference: list[np.ndarray], outputs: list[np.ndarray], where: str,
               quantized: bool | None = None) -> Parity:
    """Compare a board's outputs with the host's on the same inputs.

    Args:
        model: The model file (decides float or integer rules when ``quantized`` is None).
        reference: Outputs of the host runtime.
        outputs: Outputs computed on the board or under emulation.
        where: Names the reference in the verdict, e.g. ``host onnxruntime``.
        quantized: Integer model; detected from the file when None.

    Returns:
        The parity verdict on the primary output.
    """
    from bench.parity import compare_outputs

    if quantized is None:
        quantized = is_quantized(model)
    ref, out = reference[0], outputs[0]
    classification = ref.ndim == 2 and ref.shape[1] > 1
    task = "classification" if classification else "regression"
    if not quantized:
        return compare_outputs(ref, out, where, task, tolerance=FLOAT_ATOL)
    if classification:
        return compare_outputs(ref, out, where, task, min_agreement=INT8_MIN_AGREEMENT)
    parity = compare_outputs(ref, out, where, task)
    parity.passed = bool(parity.cosine is not None and parity.cosine >= INT8_MIN_COSINE)
    return parity
