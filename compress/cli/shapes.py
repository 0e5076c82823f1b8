"""``compress bench --shape``: the input shapes a model is timed with when no data gives them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.core.errors import InputFileError


def parse_shapes(items: list[str]) -> dict[str, list[int]]:
    """``--shape name=1x3x48x192`` options -> {name: [1, 3, 48, 192]} (``name=`` alone: a scalar)."""
    shapes: dict[str, list[int]] = {}
    for item in items:
        name, eq, dims = item.partition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if dims.strip() else []
        except ValueError:
            shape = [-1]
        if not eq or not name or any(d < 1 for d in shape):
            raise InputFileError(f"--shape {item!r}: expected NAME=1x3x224x224 (positive sizes, batch first)")
        shapes[name] = shape
    return shapes


def bench_shapes(inputs: list[dict[str, Any]], shapes: dict[str, list[int]],
                 dim_names: dict[str, list[str | None]] | None = None) -> dict[str, list[int]]:
    """The shape of each input for random inputs (batch 1): ``--shape`` where given, else the model's own.

    A dynamic dimension other than the batch is never guessed: latency grows with it (a
    ``[-1, 3, -1, -1]`` image model timed at 1x1 says nothing about 224x224), so without
    ``--shape`` or ``--data`` the input is refused, naming its dynamic dimensions.

    Args:
        dim_names: The symbolic names of each input's dimensions (ONNX ``dim_param``), for
            the message.

    Raises:
        InputFileError: an unknown name, a shape of the wrong rank or against a fixed size,
            or a dynamic dimension other than the batch with no ``--shape``.
    """
    names = [i["name"] for i in inputs]
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise InputFileError(f"--shape {unknown[0]}: the model has no input {unknown[0]!r} (its inputs: {', '.join(names)})")
    used: dict[str, list[int]] = {}
    for i in inputs:
        declared = [int(d) for d in i["shape"]]
        if i["name"] in shapes:
            given = shapes[i["name"]]
            if len(given) != len(declared) or any(0 < d != g for k, (d, g) in enumerate(zip(declared, given)) if k > 0):
                raise InputFileError(f"--shape {i['name']}={'x'.join(map(str, given))} does not fit the model's "
                                     f"input shape {declared} (-1: any size)")
            used[i["name"]] = given
            continue
        if any(k > 0 and d <= 0 for k, d in enumerate(declared)):
            raise InputFileError(_dynamic_message(i["name"], declared, (dim_names or {}).get(i["name"])))
        used[i["name"]] = [1 if k == 0 and d <= 0 else d for k, d in enumerate(declared)]
    return used


def _dynamic_message(name: str, declared: list[int], dim_names: list[str | None] | None) -> str:
    """Why an input with dynamic sizes is refused, and the ``--shape`` that would do."""
    labels = [d if d > 0 else (dim_names[k] if dim_names and k < len(dim_names) and dim_names[k] else f"D{k}")
              for k, d in enumerate(declared)]
    dynamic = [k for k, d in enumerate(declared) if k > 0 and d <= 0]
    which = " and ".join(f"{labels[k]} (axis {k})" for k in dynamic)
    template = "x".join(str(v).upper() for v in [1, *labels[1:]])
    example = "x".join(str(d) if d > 0 else ("224" if len(declared) == 4 else "128") for d in [1, *declared[1:]])
    shown = "[" + ", ".join(str(v) for v in labels) + "]"
    one = len(dynamic) == 1
    return (f"input {name!r} has shape {shown}: {which} {'is' if one else 'are'} dynamic and no data gives "
            f"{'its size' if one else 'their sizes'}; latency depends on {'it' if one else 'them'}, so no size is "
            f"guessed. Pass --shape {name}={template} with the sizes you deploy (batch first, "
            f"e.g. --shape {name}={example}) or --data FILE.npz")


def onnx_dim_names(model: Path) -> dict[str, list[str | None]]:
    """The symbolic dimension names (``dim_param``) of an ONNX model's inputs; {} for other files."""
    if model.suffix.lower() != ".onnx":
        return {}
    try:
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # noqa: BLE001  (names only improve a message; the runtime reports a bad file)
        return {}
    return {i.name: [d.dim_param or None for d in i.type.tensor_type.shape.dim] for i in graph.input}
