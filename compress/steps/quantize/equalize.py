"""Rescale channels of a float ONNX model so that int8 can represent it, without changing its function.

Two moves the quantization tuner tries, both applied to the float graph before quantization:

**Cross-layer equalization** (CLE; Nagel et al., "Data-Free Quantization Through Weight
Equalization and Bias Correction", 2019; AIMET and NNCF implement it the same way). For two
consecutive weight layers with only positive-homogeneous operators between them
(``f(x / s) = f(x) / s`` for ``s > 0``: Relu, LeakyRelu, pooling), output channel ``i`` of the
first layer can be divided by ``s_i`` and input channel ``i`` of the second multiplied by
``s_i``: the function is unchanged. With ``r1_i`` the range of layer 1's output channel ``i``
(its weights and bias) and ``r2_i`` that of layer 2's input channel ``i``,
``s_i = sqrt(r1_i / r2_i)`` makes both ranges ``sqrt(r1_i * r2_i)``: a channel scaled up by
1000 in layer 1 and down by 1000 in layer 2 is folded back, and with it the activation
outlier between them that per-tensor int8 could not share with the other channels.

**SmoothQuant** (Xiao et al. 2023) for MatMul/Gemm: activation outliers migrate into the
weights with ``s_j = max|X_j|^a / max|W_j|^(1-a)`` (``a = 0.5``) per input channel ``j``,
from calibration activations; ``W_j`` is multiplied by ``s_j`` and ``1/s_j`` folded into the
operator producing ``X`` (a weight layer, a LayerNormalization) or, failing that, applied by
an inserted ``Mul``.

Both work on a ``ModelProto`` in place and return what they changed; the caller checks that
the rewritten model computes what the original did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# f(x / s) = f(x) / s for s > 0: a scale passes through these unchanged
HOMOGENEOUS_OPS = ("Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                   "Identity", "Dropout")
SMOOTH_ALPHA = 0.5
# SmoothQuant on an input whose channel maxima differ by less than this costs accuracy
# elsewhere (the weights' range grows) and buys nothing: such inputs are left alone.
SMOOTH_MIN_OUTLIER_RATIO = 8.0
CLE_ITERATIONS = 4
SCALE_LIMITS = (1e-6, 1e6)


@dataclass
class Layer:
    """A weight-carrying node seen as a linear map between channels.

    Args:
        node: The Conv, Gemm or MatMul node.
        weight: Its weight initializer's name.
        bias: Its bias initializer (for MatMul: the constant of the Add that follows), or None.
        out_axis: The weight axis holding output channels.
        in_axis: The weight axis holding input channels.
        output: The tensor carrying the layer's result (the Add's output for MatMul + Add).
    """

    node: Any
    weight: str
    bias: str | None
    out_axis: int
    in_axis: int
    output: str


class _Graph:
    """Index of a ModelProto's graph: initializers as arrays, producers and consumers."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer
                       if i.data_type == 1}  # float32 only
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}
        self.changed: set[str] = set()

    def uses(self, name: str) -> int:
        return len(self.consumers.get(name, []))

    def set(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = value.astype(np.float32)
        self.changed.add(name)

    def write_back(self) -> None:
        from onnx import numpy_helper

        for name in self.changed:
            self.inits[name].CopyFrom(numpy_helper.from_array(self.arrays[name], name))
        self.changed.clear()

    def sole_consumer(self, tensor: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None


def _attr(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def layer_of(g: _Graph, node: Any) -> Layer | None:
    """The node as a :class:`Layer`, or None when it is not a rescalable weight layer."""
    if len(node.input) < 2 or node.input[1] not in g.arrays or g.uses(node.input[1]) != 1:
        return None
    w = g.arrays[node.input[1]]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in g.arrays else None
    if bias is not None and g.uses(bias) != 1:
        return None
    output = node.output[0]
    if node.op_type == "Conv":
        groups = _attr(node, "group", 1)
        if groups == 1:
            return Layer(node, node.input[1], bias, 0, 1, output)
        if groups == w.shape[0] and w.shape[1] == 1:  # depthwise: channel i in, channel i out
            return Layer(node, node.input[1], bias, 0, 0, output)
        return None
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0) or w.ndim != 2:
            return None
        trans_b = _attr(node, "transB", 0)
        if bias is not None and g.arrays[bias].size not in (1, w.shape[0 if trans_b else 1]):
            return None
        return Layer(node, node.input[1], bias, 0 if trans_b else 1, 1 if trans_b else 0, output)
    if node.op_type == "MatMul" and w.ndim == 2:
        add = g.sole_consumer(output)
        if add is not None and add.op_type == "Add":
            other = add.input[1] if add.input[0] == output else add.input[0]
            if other in g.arrays and g.uses(other) == 1 and g.arrays[other].shape == (w.shape[1],):
                return Layer(node, node.input[1], other, 1, 0, add.output[0])
        return Layer(node, node.input[1], None, 1, 0, output)
    return None


def _channel_max(a: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(np.moveaxis(a, axis, 0)).reshape(a.shape[axis], -1).max(axis=1)


def _scale_along(a: np.ndarray, axis: int, s: np.ndarray) -> np.ndarray:
    shape = [1] * a.ndim
    shape[axis] = s.size
    return a * s.reshape(shape)


def scale_outputs(g: _Graph, layer: Layer, s: np.ndarray) -> None:
    """Multiply output channel ``i`` of ``layer`` by ``s[i]`` (weights and bias)."""
    g.set(layer.weight, _scale_along(g.arrays[layer.weight], layer.out_axis, s))
    if layer.bias is not None:
        b = g.arrays[layer.bias]
        if b.size == 1 and s.size > 1:  # a scalar Gemm bias becomes per-channel
            b = np.full(s.size, float(b.reshape(-1)[0]), np.float32)
            init = g.inits[layer.bias]
            del init.dims[:]
            init.dims.extend([s.size])
        g.set(layer.bias, b.reshape(-1) * s if b.ndim <= 1 else _scale_along(b, b.ndim - 1, s))


def scale_inputs(g: _Graph, layer: Layer, s: np.ndarray) -> None:
    """Multiply input channel ``j`` of ``layer``'s weights by ``s[j]``."""
    g.set(layer.weight, _scale_along(g.arrays[layer.weight], layer.in_axis, s))


def _next_layer(g: _Graph, tensor: str) -> Layer | None:
    """The weight layer reached from ``tensor`` through single-consumer homogeneous operators."""
    after_global_pool = False
    for _ in range(8):
        node = g.sole_consumer(tensor)
        if node is None:
            return None
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            return layer_of(g, node) if node.input[0] == tensor else None
        if node.op_type == "Flatten" and after_global_pool:  # (N, C, 1, 1) -> (N, C): channels kept
            tensor = node.output[0]
            continue
        if node.op_type not in HOMOGENEOUS_OPS or node.input[0] != tensor:
            return None
        after_global_pool = node.op_type in ("GlobalAveragePool", "GlobalMaxPool")
        tensor = node.output[0]
    return None


def equalization_pairs(g: _Graph) -> list[tuple[Layer, Layer]]:
    """Consecutive (layer 1, layer 2) pairs whose shared channels can be rescaled."""
    pairs = []
    for node in g.model.graph.node:
        first = layer_of(g, node)
        if first is None:
            continue
        second = _next_layer(g, first.output)
        if second is None:
            continue
        n_out = g.arrays[first.weight].shape[first.out_axis]
        if g.arrays[second.weight].shape[second.in_axis] == n_out:
            pairs.append((first, second))
    return pairs


def _clip_scales(s: np.ndarray) -> np.ndarray:
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.clip(s, *SCALE_LIMITS)


def cross_layer_equalize(model: Any, iterations: int = CLE_ITERATIONS) -> list[dict[str, Any]]:
    """Equalize the channel ranges of every consecutive layer pair, in place.

    Args:
        model: A float ONNX ModelProto.
        iterations: Passes over the pairs (a chain of three layers converges over passes).

    Returns:
        One entry per equalized pair: the two node names and the largest scale applied.
    """
    g = _Graph(model)
    pairs = equalization_pairs(g)
    largest: dict[tuple[str, str], float] = {}
    for _ in range(iterations):
        for first, second in pairs:
            w1, w2 = g.arrays[first.weight], g.arrays[second.weight]
            r1 = _channel_max(w1, first.out_axis)
            r2 = _channel_max(w2, second.in_axis)
            s = _clip_scales(np.sqrt(r1 / np.where(r2 > 0, r2, np.nan)))
            scale_outputs(g, first, 1.0 / s)
            scale_inputs(g, second, s)
            key = (first.node.name, second.node.name)
            largest[key] = max(largest.get(key, 1.0), float(np.max(np.maximum(s, 1.0 / s))))
    g.write_back()
    return [{"first": a, "second": b, "max_scale": round(v, 3)} for (a, b), v in largest.items()]


def _fold_upstream(g: _Graph, tensor: str, s: np.ndarray) -> str | None:
    """Divide ``tensor``'s channels by ``s`` where it is made; the folding node's name, or None."""
    for _ in range(8):
        node = g.producer.get(tensor)
        if node is None or g.uses(tensor) != 1:
            return None
        if node.op_type in ("Conv", "Gemm", "MatMul", "Add"):
            bases = [g.producer.get(i) for i in node.input] if node.op_type == "Add" else [node]
            layers = [lay for lay in (layer_of(g, b) for b in bases if b is not None) if lay and lay.output == tensor]
            if not layers or g.arrays[layers[0].weight].shape[layers[0].out_axis] != s.size:
                return None
            scale_outputs(g, layers[0], 1.0 / s)
            return layers[0].node.name
        if node.op_type == "LayerNormalization" and len(node.input) >= 2 and node.input[1] in g.arrays:
            for name in node.input[1:3]:
                if name in g.arrays and g.uses(name) == 1 and g.arrays[name].shape == s.shape:
                    g.set(name, g.arrays[name] / s)
                elif name in g.arrays:
                    return None
            return node.name
        if node.op_type not in HOMOGENEOUS_OPS:
            return None
        tensor = node.input[0]
    return None


def smooth_quant(model: Any, input_channel_max: Callable[[str, int], np.ndarray | None],
                 alpha: float = SMOOTH_ALPHA) -> list[dict[str, Any]]:
    """Migrate activation outliers of MatMul/Gemm inputs into their weights, in place.

    Args:
        model: A float ONNX ModelProto.
        input_channel_max: ``(tensor, channels)`` -> max|X_j| over the calibration inputs
            for each of the tensor's ``channels`` last-axis channels (as a MatMul/Gemm reads
            them), or None when unknown.
        alpha: Migration strength (0: none, 1: all of the activation range).

    Returns:
        One entry per smoothed node: its name, where ``1/s`` went, and the largest scale.
    """
    from onnx import helper, numpy_helper

    g = _Graph(model)
    done = []
    inserted = []
    for node in list(model.graph.node):
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        layer = layer_of(g, node)
        if layer is None:
            continue
        channels = int(g.arrays[layer.weight].shape[layer.in_axis])
        x_max = input_channel_max(node.input[0], channels)
        if x_max is None or x_max.size != channels:
            continue
        median = float(np.median(x_max))
        if median <= 0 or float(x_max.max()) / median < SMOOTH_MIN_OUTLIER_RATIO:
            continue
        w_max = _channel_max(g.arrays[layer.weight], layer.in_axis)
        s = _clip_scales(np.power(np.maximum(x_max, 1e-12), alpha) / np.power(np.maximum(w_max, 1e-12), 1 - alpha))
        scale_inputs(g, layer, s)
        where = _fold_upstream(g, node.input[0], s)
        if where is None:  # nothing to fold into: the division is its own node
            name = f"{node.name or node.output[0]}_smooth"
            inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{name}_inv_scale")
            model.graph.initializer.append(inv)
            out = f"{node.input[0]}_smoothed_for_{node.name or node.output[0]}"
            inserted.append((node, helper.make_node("Mul", [node.input[0], inv.name], [out], name=name)))
            node.input[0] = out
            where = name
        done.append({"node": node.name, "folded_into": where, "max_scale": round(float(np.max(s)), 3)})
    g.write_back()
    if inserted:  # keep the graph topologically sorted: each Mul just before its consumer
        before = {tuple(consumer.output): mul for consumer, mul in inserted}
        nodes = []
        for n in model.graph.node:
            if tuple(n.output) in before:
                nodes.append(before[tuple(n.output)])
            copy = type(n)()
            copy.CopyFrom(n)
            nodes.append(copy)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return done


# Largest output difference (over the output range) a rewrite may introduce: rescaling by
# powers far from 1 rounds differently in float32, but stays orders of magnitude below int8's step.
PARITY_RTOL = 1e-3


def apply_moves(src: Any, dst: Any, moves: tuple[str, ...], feeds: list[dict[str, np.ndarray]],
                work: Any) -> dict[str, Any]:
    """Write ``src`` rewritten by ``moves`` (``cle``, ``smoothquant``) to ``dst`` and check it.

    Args:
        src: The float ONNX model's path.
        dst: Where the rewritten model goes.
        moves: The moves, applied in the order given.
        feeds: Calibration inputs: SmoothQuant's activation ranges and the parity check.
        work: A folder for intermediate files.

    Returns:
        What changed (per move), whether anything did (``changed``), and the parity figures.

    Raises:
        ValueError: The rewritten model computes something else than the original.
    """
    import onnx

    from compress.steps.quantize.opset import compare, run_outputs
    from compress.steps.quantize.tuning import collect

    model = onnx.load(str(src))
    notes: dict[str, Any] = {}
    for move in moves:
        if move == "cle":
            notes["cle"] = cross_layer_equalize(model)
        elif move == "smoothquant":
            staged = work / f"{dst.stem}.staged.onnx"
            onnx.save(model, str(staged))
            acts = collect(staged, work, feeds)
            staged.unlink(missing_ok=True)

            def channel_max(tensor: str, channels: int, acts: dict[str, list[np.ndarray]] = acts) -> np.ndarray | None:
                arrays = acts.get(tensor) or [f[tensor] for f in feeds if tensor in f]
                if not arrays or any(a.size % channels for a in arrays):
                    return None
                return np.concatenate([np.abs(a).reshape(-1, channels) for a in arrays]).max(axis=0)

            notes["smoothquant"] = smooth_quant(model, channel_max)
        else:
            raise ValueError(f"unknown move {move!r}")
    notes["changed"] = any(notes.get(m) for m in moves)
    onnx.save(model, str(dst))
    check = feeds[:4]
    if check:
        abs_diff, rel_diff = compare(run_outputs(src, check), run_outputs(dst, check))
        notes["parity_max_abs_diff"] = abs_diff
        notes["parity_max_rel_diff"] = rel_diff
        if not rel_diff <= PARITY_RTOL:
            raise ValueError(f"{'+'.join(moves)} changed the model's outputs (max abs diff {abs_diff:.3g}, "
                             f"{rel_diff:.2%} of their range)")
    return notes
