"""Per-layer work of a model: MACs and bytes moved, from an ONNX graph or a TFLite flatbuffer.

The estimator applies a roofline to each layer, so it needs, per node: the kind of
kernel (regular convolution, depthwise, matrix multiply, elementwise, pooling, data
movement), the multiply-accumulates, the bytes the node reads and writes, and whether it
computes in int8. Shapes come from ONNX shape inference (the batch fixed first) or from
the TFLite interpreter's tensor table. Activations the runtimes fuse into the preceding
convolution (ReLU, ReLU6/Clip) and the Quantize/Dequantize pairs of a QDQ graph cost
nothing of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("conv", "depthwise", "gemm", "elementwise", "pool", "other")

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
                "Gelu", "LeakyRelu", "PRelu", "BatchNormalization", "LayerNormalization", "Softmax", "Exp", "Sqrt",
                "Pow", "Neg", "Abs", "Max", "Min", "Where", "Cast", "QLinearAdd", "QLinearMul", "Mish", "Silu"}
_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum",
         "QLinearGlobalAveragePool", "QLinearAveragePool"}
_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Constant", "Identity", "Dropout", "ConstantOfShape",
         "Range", "Size"}
_CONV = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"}
_GEMM = {"Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "FusedMatMul"}
_FUSABLE_ACT = {"Relu", "Clip", "LeakyRelu"}
_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}

_TFL_CONV = {"CONV_2D", "TRANSPOSE_CONV", "CONV_3D"}
_TFL_GEMM = {"FULLY_CONNECTED", "BATCH_MATMUL"}
_TFL_POOL = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "SUM", "REDUCE_MAX"}
_TFL_FREE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "DELEGATE", "SHAPE"}
_TFL_COPY = {"TRANSPOSE", "CONCATENATION", "PAD", "PADV2", "SLICE", "STRIDED_SLICE", "GATHER", "SPLIT", "PACK",
             "UNPACK", "QUANTIZE", "DEQUANTIZE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}


@dataclass(frozen=True)
class Layer:
    """The work of one node."""

    name: str
    op: str
    kind: str
    macs: int
    bytes: int
    int8: bool

    @property
    def ops(self) -> int:
        """Arithmetic operations: two per MAC for convolutions and matrix products, one per element otherwise."""
        return 2 * self.macs if self.kind in ("conv", "depthwise", "gemm") else self.macs


def _prod(shape: list[int] | tuple[int, ...]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


# ---------------------------------------------------------------------------- ONNX


def _onnx_shapes(path: Path, batch: int, shapes: dict[str, list[int]] | None = None) -> tuple[Any, dict[str, tuple[list[int], int]]]:
    """The graph and, per tensor name, (shape, element size in bytes) after shape inference.

    Args:
        shapes: Real shapes of the inputs by name (one request, batch axis first); a dynamic
            dim they do not give is the batch on axis 0, else 1.
    """
    import onnx
    from onnx import TensorProto, helper, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        given = (shapes or {}).get(inp.name)
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                d.dim_value = batch if i == 0 else (given[i] if given is not None and i < len(given) else 1)
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except (shape_inference.InferenceError, ValueError, RuntimeError):
        inferred = model  # a graph the checker dislikes still has usable initializer shapes
    table: dict[str, tuple[list[int], int]] = {}

    def size_of(elem_type: int) -> int:
        try:
            return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
        except (KeyError, TypeError, ValueError):
            return 4

    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        table[vi.name] = (dims, size_of(t.elem_type) if t.elem_type != TensorProto.UNDEFINED else 4)
    for init in inferred.graph.initializer:
        table[init.name] = (list(init.dims), size_of(init.data_type))
    return inferred.graph, table


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def onnx_layers(path: Path, batch: int = 1, shapes: dict[str, list[int]] | None = None) -> list[Layer]:
    """The work of every costly node of an ONNX model at a given batch size (inputs' real ``shapes`` by name)."""
    graph, table = _onnx_shapes(path, batch, shapes)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1

    def shape(name: str) -> list[int]:
        return table.get(name, ([], 4))[0]

    def nbytes(name: str, int8: bool) -> int:
        dims, size = table.get(name, ([], 4))
        return _prod(dims) * (1 if int8 and size >= 1 and name not in bias_like else size)

    bias_like: set[str] = set()
    layers: list[Layer] = []
    for node in graph.node:
        op = node.op_type
        if op in _FREE or op in _QDQ:
            continue
        data_in = [i for i in node.input if i]
        src = producer.get(data_in[0]) if data_in else None
        int8 = op.startswith("QLinear") or op.endswith("Integer") or any(
            producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in data_in)
        if op in _FUSABLE_ACT and src is not None and src.op_type in (_CONV | _GEMM | {"Add"}) \
                and consumers.get(data_in[0], 0) == 1:
            continue  # fused into the producer's kernel
        out = node.output[0]
        out_elems = _prod(shape(out))
        if op in _CONV:
            w_name = node.input[3] if op == "QLinearConv" else node.input[1]
            w = shape(w_name)
            if len(node.input) > 2 and op != "QLinearConv":
                bias_like.add(node.input[2])
            group = int(_attr(node, "group", 1))
            per_out = _prod(w[1:]) if len(w) > 1 else 1
            macs = out_elems * per_out if op != "ConvTranspose" else _prod(shape(data_in[0])) * _prod(w[1:])
            kind = "depthwise" if group > 1 and len(w) > 1 and w[1] == 1 else "conv"
        elif op in _GEMM:
            a = shape(data_in[0])
            k = a[-1] if a else 1
            if op == "Gemm" and int(_attr(node, "transA", 0)):
                k = a[0] if a else 1
            macs = out_elems * k
            kind = "gemm"
        elif op in _POOL:
            kernel = _attr(node, "kernel_shape", None)
            macs = out_elems * _prod(kernel) if kernel else _prod(shape(data_in[0]))
            kind = "pool"
        elif op in _ELEMENTWISE:
            macs, kind = out_elems, "elementwise"
        else:
            macs, kind = 0, "other"
        moved = sum(nbytes(i, int8) for i in data_in if not _is_scalar_param(i, table)) + \
            sum(nbytes(o, int8) for o in node.output if o)
        layers.append(Layer(node.name or f"{op}_{len(layers)}", op, kind, int(macs), int(moved), bool(int8)))
    return layers


def _is_scalar_param(name: str, table: dict[str, tuple[list[int], int]]) -> bool:
    dims = table.get(name, ([0], 4))[0]
    return _prod(dims) <= 1


# ---------------------------------------------------------------------------- TFLite


def tflite_layers(path: Path, batch: int = 1) -> list[Layer]:
    """The work of every costly op of a TFLite flatbuffer (its own batch size; ``batch`` scales it)."""
    from bench.runtime import open_model

    session = open_model(path)
    it = session._it
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    shaped = [i["shape"] for i in session.inputs if i["shape"]]
    model_batch = int(shaped[0][0]) if shaped and shaped[0][0] > 0 else 1
    scale = max(1, batch) / model_batch if model_batch else 1.0
    layers: list[Layer] = []
    for op in it._get_ops_details():
        name = op["op_name"]
        if name in _TFL_FREE:
            continue
        ins = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        outs = [tensors[i] for i in op["outputs"] if i in tensors]
        if not outs:
            continue
        out_elems = _prod(outs[0]["shape"].tolist())
        int8 = any(np.dtype(t["dtype"]).kind in "iu" and np.dtype(t["dtype"]).itemsize == 1 for t in ins[:2])
        if name in _TFL_CONV or name == "DEPTHWISE_CONV_2D":
            w = ins[1]["shape"].tolist()
            if name == "DEPTHWISE_CONV_2D":
                macs, kind = out_elems * _prod(w[1:3]), "depthwise"
            elif name == "TRANSPOSE_CONV":
                macs, kind = _prod(ins[2]["shape"].tolist()) * _prod(w[:3]), "conv"
            else:
                macs, kind = out_elems * _prod(w[1:]), "conv"
        elif name in _TFL_GEMM:
            k = ins[0]["shape"].tolist()[-1] if len(ins[0]["shape"]) else 1
            macs, kind = out_elems * k, "gemm"
        elif name in _TFL_POOL:
            macs, kind = _prod(ins[0]["shape"].tolist()), "pool"
        elif name in _TFL_COPY:
            macs, kind = 0, "other"
        else:
            macs, kind = out_elems, "elementwise"
        moved = sum(int(t["shape"].prod() if len(t["shape"]) else 1) * np.dtype(t["dtype"]).itemsize for t in ins + outs)
        layers.append(Layer(f"{name}_{op['index']}", name, kind, int(macs * scale), int(moved * scale), bool(int8)))
    return layers


def model_layers(path: Path, batch: int = 1, shapes: dict[str, list[int]] | None = None) -> list[Layer]:
    """Layers of an ONNX or TFLite file (``shapes``: the inputs' real shapes by name, for dynamic dims)."""
    path = Path(path)
    return tflite_layers(path, batch) if path.suffix == ".tflite" else onnx_layers(path, batch, shapes)


def summarize_layers(layers: list[Layer]) -> dict[str, Any]:
    """Totals per kind, for reports."""
    out: dict[str, Any] = {"macs": sum(la.macs for la in layers if la.kind in ("conv", "depthwise", "gemm")),
                           "bytes": sum(la.bytes for la in layers), "nodes": len(layers),
                           "int8_share": (sum(la.macs for la in layers if la.int8) / max(1, sum(la.macs for la in layers)))}
    out["by_kind"] = {k: {"nodes": sum(1 for la in layers if la.kind == k), "macs": sum(la.macs for la in layers if la.kind == k)}
                      for k in KINDS if any(la.kind == k for la in layers)}
    return out
