"""Convert an ONNX model's float32 tensors to float16, keeping float32 inputs and outputs.

Written against the plain ``onnx`` API (onnxconverter-common is not a dependency):
float initializers, ``Constant`` / ``ConstantOfShape`` values and ``Cast(to=float)`` become
float16; a ``Cast`` after each float input and before each float output keeps the model's
interface float32, so an app feeds it the same arrays as the float model. Constants are
clamped to float16's finite range, because exporters write ``finfo(float32).min`` as an
attention-mask fill value, which would become ``-inf`` and turn ``0 * -inf`` into NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)

# Operators without a float16 variant in the ONNX standard: run them in float32.
KEEP_FLOAT_OPS = frozenset({"NonMaxSuppression", "RandomNormal", "RandomUniform", "RandomNormalLike",
                            "RandomUniformLike", "Multinomial"})
# (op type, input index) pairs that must stay float32 whatever the data type of the op.
KEEP_FLOAT_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})


def _to_fp16_array(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)


def _convert_tensor(t: Any) -> Any:
    from onnx import numpy_helper

    arr = _to_fp16_array(numpy_helper.to_array(t))
    new = numpy_helper.from_array(arr, t.name)
    return new


def _convert_graph(graph: Any, keep_initializers: set[str]) -> None:
    """Convert initializers, constants and casts of one graph and its subgraphs in place."""
    import onnx
    from onnx import TensorProto

    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep_initializers:
            graph.initializer[i].CopyFrom(_convert_tensor(init))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _convert_graph(attr.g, keep_initializers)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _convert_graph(g, keep_initializers)
        if node.op_type in KEEP_FLOAT_OPS:
            continue
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        elif node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_convert_tensor(attr.t))
                elif attr.name == "value_float":
                    attr.f = float(np.clip(attr.f, -FP16_MAX, FP16_MAX))
                elif attr.name == "value_floats":
                    vals = [float(np.clip(v, -FP16_MAX, FP16_MAX)) for v in attr.floats]
                    del attr.floats[:]
                    attr.floats.extend(vals)


def convert_to_fp16(model: Any) -> Any:
    """Return a float16 copy of ``model`` whose graph inputs and outputs stay float32.

    Args:
        model: An ``onnx.ModelProto`` with float32 tensors.

    Returns:
        A new ``onnx.ModelProto``.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    keep: set[str] = set()
    for node in g.node:
        for idx, name in enumerate(node.input):
            if node.op_type in KEEP_FLOAT_OPS or (node.op_type, idx) in KEEP_FLOAT_INPUTS:
                keep.add(name)
    _convert_graph(g, keep)

    float_inputs = [i for i in g.input if i.type.tensor_type.elem_type == TensorProto.FLOAT]
    float_outputs = [o for o in g.output if o.type.tensor_type.elem_type == TensorProto.FLOAT]
    new_nodes = []
    rename: dict[str, str] = {}
    for inp in float_inputs:
        casted = f"{inp.name}__fp16"
        rename[inp.name] = casted
        new_nodes.append(helper.make_node("Cast", [inp.name], [casted], name=f"{inp.name}__to_fp16",
                                          to=TensorProto.FLOAT16))
    for node in g.node:
        for idx, name in enumerate(node.input):
            if name in rename:
                node.input[idx] = rename[name]
    # Nodes that must run in float32: cast their float16 inputs up and their outputs back down.
    body = []
    for node in g.node:
        if node.op_type in KEEP_FLOAT_OPS:
            for idx, name in enumerate(node.input):
                if name and name not in keep:
                    up = f"{name}__fp32_{node.name}"
                    body.append(helper.make_node("Cast", [name], [up], name=f"{up}__cast", to=TensorProto.FLOAT))
                    node.input[idx] = up
            body.append(node)
            for idx, name in enumerate(node.output):
                raw = f"{name}__fp32"
                node.output[idx] = raw
                body.append(helper.make_node("Cast", [raw], [name], name=f"{raw}__cast", to=TensorProto.FLOAT16))
        else:
            body.append(node)
    out_names = {o.name for o in float_outputs}
    for node in body:
        for idx, name in enumerate(node.output):
            if name in out_names:
                node.output[idx] = f"{name}__fp16"
    tail = [helper.make_node("Cast", [f"{o.name}__fp16"], [o.name], name=f"{o.name}__to_fp32", to=TensorProto.FLOAT)
            for o in float_outputs]
    # A graph input that is also an output passes through untouched.
    for o in float_outputs:
        if o.name in rename:
            tail = [t for t in tail if t.output[0] != o.name]
    del g.node[:]
    g.node.extend(new_nodes + body + tail)
    # Intermediate type annotations are stale now; the runtime infers them again.
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model
