"""Read a ``.tflite`` flatbuffer: its operators, tensor dtypes and the quantization of its I/O.

No interpreter is built: the file is parsed with the schema module that ships with
``ai-edge-litert`` (imported inside :func:`inspect_tflite`, so importing this module stays
light). The export step records the result in the artifact's metadata, and the
saturation advisory reads the output quantization from it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# TensorType names as numpy spells them; the schema's own names are upper case.
_NUMPY_NAMES = {"FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "INT8": "int8", "UINT8": "uint8",
                "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "UINT32": "uint32", "INT64": "int64",
                "UINT64": "uint64", "BOOL": "bool", "STRING": "string", "INT4": "int4"}


@dataclass
class TensorInfo:
    """One input or output of the model's main subgraph."""

    name: str
    shape: list[int]
    dtype: str
    quantization: dict[str, float | int] | None = None


@dataclass
class TfliteSummary:
    """What a ``.tflite`` file holds.

    Args:
        inputs: Inputs in call order, with the name the signature gives them.
        outputs: Outputs in order.
        ops: Operator name -> how many times it occurs.
        float_ops: Operators (other than DEQUANTIZE) that compute in float32: the residue
            a "full int8" model keeps in float.
        tensor_dtypes: dtype -> number of tensors of that dtype.
        signature: The signature key (``serving_default``), or None.
        signature_inputs: The signature's names of the inputs, in call order (the keys
            ai-edge-quantizer's calibration expects).
    """

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: dict[str, int]
    float_ops: dict[str, int]
    tensor_dtypes: dict[str, int]
    signature: str | None = None
    signature_inputs: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict[str, Any]:
        """The JSON-serialisable form stored in an artifact's metadata."""
        return {
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
            "ops": self.ops,
            "float_ops": self.float_ops,
            "tensor_dtypes": self.tensor_dtypes,
        }


def _enum_names(enum_cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _decode(name: Any) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")


def _tensor_info(tensor: Any, dtypes: dict[int, str], name: str | None = None) -> TensorInfo:
    q = tensor.quantization
    quant = None
    if q is not None and q.scale is not None and len(q.scale) == 1 and float(q.scale[0]) != 0.0:
        zero = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
        quant = {"scale": float(q.scale[0]), "zero_point": zero}
    shape = [int(s) for s in tensor.shape] if tensor.shape is not None else []
    return TensorInfo(name=name or _decode(tensor.name), shape=shape, dtype=dtypes.get(tensor.type, str(tensor.type)),
                      quantization=quant)


def inspect_tflite(model: Path | str | bytes) -> TfliteSummary:
    """Parse a ``.tflite`` file (or its bytes) and summarise its main subgraph.

    Raises:
        ImportError: when ``ai-edge-litert`` (which ships the schema) is missing.
        ValueError: when the bytes are not a TFLite flatbuffer.
    """
    from ai_edge_litert import schema_py_generated as schema

    buf = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    if len(buf) < 8 or bytes(buf[4:8]) != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (file identifier TFL3 missing)")
    m = schema.ModelT.InitFromPackedBuf(bytes(buf), 0)
    if not m.subgraphs:
        raise ValueError("the TFLite model has no subgraph")
    dtypes = {k: _NUMPY_NAMES.get(v, v.lower()) for k, v in _enum_names(schema.TensorType).items()}
    builtin = _enum_names(schema.BuiltinOperator)
    sub = m.subgraphs[0]
    tensors = sub.tensors or []
    inputs_idx = [int(i) for i in (sub.inputs if sub.inputs is not None else [])]
    outputs_idx = [int(i) for i in (sub.outputs if sub.outputs is not None else [])]

    sig_key, sig_in = None, {}
    if m.signatureDefs:
        sig = m.signatureDefs[0]
        sig_key = _decode(sig.signatureKey)
        sig_in = {int(t.tensorIndex): _decode(t.name) for t in sig.inputs or []}

    def op_name(code_index: int) -> str:
        code = m.operatorCodes[code_index]
        # Codes above 127 live in builtinCode; older files only fill deprecatedBuiltinCode.
        value = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
        if value == getattr(schema.BuiltinOperator, "CUSTOM", 32):
            return f"CUSTOM:{_decode(code.customCode)}"
        return builtin.get(value, f"OP_{value}")

    ops: Counter[str] = Counter()
    float_ops: Counter[str] = Counter()
    for op in sub.operators or []:
        name = op_name(op.opcodeIndex)
        ops[name] += 1
        outs = [int(o) for o in (op.outputs if op.outputs is not None else []) if o >= 0]
        if name != "DEQUANTIZE" and outs and dtypes.get(tensors[outs[0]].type) == "float32":
            float_ops[name] += 1
    tensor_dtypes = Counter(dtypes.get(t.type, str(t.type)) for t in tensors)
    return TfliteSummary(
        inputs=[_tensor_info(tensors[i], dtypes) for i in inputs_idx],
        outputs=[_tensor_info(tensors[i], dtypes) for i in outputs_idx],
        ops=dict(sorted(ops.items())),
        float_ops=dict(sorted(float_ops.items())),
        tensor_dtypes=dict(sorted(tensor_dtypes.items())),
        signature=sig_key,
        signature_inputs=[sig_in.get(i, f"args_{k}") for k, i in enumerate(inputs_idx)],
    )
