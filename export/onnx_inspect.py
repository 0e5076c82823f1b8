"""Read facts off an ONNX model that decide how to quantize it.

Which operators carry the compute (convolutions or matrix products), how many
multiply-accumulates each node does (from inferred shapes), how sparse the weights are,
and the quantization parameters at the model's inputs and outputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONV_OPS = ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv")
MATMUL_OPS = ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits")
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits", "MatMulInteger",
             "ConvInteger", "QLinearConv", "QLinearMatMul")


@dataclass
class ModelSummary:
    """What a model computes, by operator family.

    Args:
        op_counts: Number of nodes per operator type.
        node_macs: Multiply-accumulates of one batch-1 inference per Conv/MatMul/Gemm node.
        conv_macs: Sum over convolution nodes.
        matmul_macs: Sum over MatMul and Gemm nodes.
        weight_params: Elements in float weight initializers of Conv/MatMul/Gemm nodes.
        weight_sparsity: Share of those elements that are exactly zero.
        quantized: True when the graph already holds quantization operators.
        opset: The default (``ai.onnx``) domain's opset; per-channel quantization needs 13+.
    """

    op_counts: dict[str, int] = field(default_factory=dict)
    node_macs: dict[str, int] = field(default_factory=dict)
    conv_macs: int = 0
    matmul_macs: int = 0
    weight_params: int = 0
    weight_sparsity: float = 0.0
    quantized: bool = False
    opset: int = 0

    @property
    def conv_share(self) -> float:
        """Share of the compute in convolutions (0 when nothing is counted)."""
        total = self.conv_macs + self.matmul_macs
        return self.conv_macs / total if total else 0.0

    @property
    def n_conv(self) -> int:
        return sum(self.op_counts.get(op, 0) for op in CONV_OPS)

    @property
    def n_matmul(self) -> int:
        return sum(self.op_counts.get(op, 0) for op in MATMUL_OPS)

    def as_dict(self) -> dict[str, Any]:
        return {
            "op_counts": dict(sorted(self.op_counts.items())),
            "conv_nodes": self.n_conv,
            "matmul_nodes": self.n_matmul,
            "conv_macs": self.conv_macs,
            "matmul_macs": self.matmul_macs,
            "conv_share": round(self.conv_share, 4),
            "weight_params": self.weight_params,
            "weight_sparsity": round(self.weight_sparsity, 4),
            "opset": self.opset,
        }


def _dims(value_info: Any) -> list[int] | None:
    """Static dims of a tensor type; symbolic dims (a dynamic batch) count as 1."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]


def load_shapes(model: Any) -> tuple[Any, dict[str, list[int]]]:
    """The model with inferred shapes, and a map tensor name -> dims (batch 1)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  shape inference is best effort: a node without shapes just counts 0 MACs
        inferred = model
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return inferred, shapes


def node_macs(node: Any, shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of a Conv, MatMul or Gemm node from its tensor shapes (0 if unknown)."""
    out = shapes.get(node.output[0]) if node.output else None
    if not out:
        return 0
    out_elems = int(np.prod(out))
    if node.op_type in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1])
        if not w or len(w) < 3:
            return 0
        if node.op_type == "Conv":  # weight (Cout, Cin/groups, k...): each output sums Cin/groups * k taps
            return out_elems * w[1] * int(np.prod(w[2:]))
        x = shapes.get(node.input[0])  # weight (Cin, Cout/groups, k...): each input scatters to those taps
        return int(np.prod(x)) * w[1] * int(np.prod(w[2:])) if x else 0
    if node.op_type == "MatMul":
        a = shapes.get(node.input[0])
        return out_elems * a[-1] if a else 0
    if node.op_type == "Gemm":
        a = shapes.get(node.input[0])
        trans_a = next((a_.i for a_ in node.attribute if a_.name == "transA"), 0)
        if not a or len(a) != 2:
            return 0
        return out_elems * (a[0] if trans_a else a[1])
    return 0


def summarize(model_or_path: Any) -> ModelSummary:
    """Operator counts, MACs by family and weight sparsity of an ONNX model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    inferred, shapes = load_shapes(model)
    inits = {i.name: i for i in model.graph.initializer}
    s = ModelSummary(op_counts=dict(Counter(n.op_type for n in model.graph.node)))
    s.quantized = any(n.op_type in QUANT_OPS for n in model.graph.node)
    s.opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    zeros = total = 0
    seen: set[str] = set()
    for node in inferred.graph.node:
        macs = node_macs(node, shapes)
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            s.node_macs[node.name] = macs
            if node.op_type.startswith("Conv"):
                s.conv_macs += macs
            else:
                s.matmul_macs += macs
            for name in node.input[1:2]:
                init = inits.get(name)
                if init is None or name in seen or init.data_type != onnx.TensorProto.FLOAT:
                    continue
                seen.add(name)
                w = numpy_helper.to_array(init)
                zeros += int((w == 0).sum())
                total += int(w.size)
    s.weight_params = total
    s.weight_sparsity = zeros / total if total else 0.0
    return s


def io_quant_params(model_or_path: Any) -> dict[str, Any]:
    """Scale and zero point of QuantizeLinear nodes fed by a graph input, and of
    DequantizeLinear nodes feeding a graph output (what an app needs to feed int8 directly)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inputs = {i.name for i in g.input}
    outputs = {o.name for o in g.output}
    producers = {o: n for n in g.node for o in n.output}

    def params(node: Any) -> dict[str, Any] | None:
        scale = inits.get(node.input[1]) if len(node.input) > 1 else None
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1:
            return None
        return {"scale": float(scale.reshape(-1)[0]),
                "zero_point": int(zp.reshape(-1)[0]) if zp is not None else 0,
                "dtype": str(zp.dtype) if zp is not None else "uint8"}

    result: dict[str, Any] = {"inputs": {}, "outputs": {}}
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in inputs:
            p = params(node)
            if p:
                result["inputs"][node.input[0]] = p
    for out in outputs:
        node = producers.get(out)
        if node is not None and node.op_type == "DequantizeLinear":
            p = params(node)
            if p:
                result["outputs"][out] = p
    return result


def input_names(path: Path) -> tuple[list[str], int | None]:
    """Names of the graph inputs (initializers excluded) and the fixed batch size, if any."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    dim0 = inputs[0].type.tensor_type.shape.dim[0] if inputs and inputs[0].type.tensor_type.shape.dim else None
    batch = dim0.dim_value if dim0 is not None and dim0.HasField("dim_value") and dim0.dim_value > 0 else None
    return [i.name for i in inputs], batch
