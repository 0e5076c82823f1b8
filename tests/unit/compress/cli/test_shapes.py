"""``compress bench`` with no data: the shapes it times, and the dynamic sizes it refuses to guess."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress.cli.shapes import bench_shapes, onnx_dim_names, parse_shapes
from compress.core.errors import InputFileError


def _inputs(*shapes: list[int], dtype: str = "float32") -> list[dict]:
    return [{"name": f"in{k}", "shape": s, "dtype": dtype} for k, s in enumerate(shapes)]


def test_fixed_sizes_are_used_and_a_dynamic_batch_is_one() -> None:
    assert bench_shapes(_inputs([-1, 3, 32, 32], [4]), {}) == {"in0": [1, 3, 32, 32], "in1": [4]}


@pytest.mark.parametrize("shape, names, words", [
    # an image model exported with dynamic height and width (ONNX dim_param names)
    ([-1, 3, -1, -1], ["N", None, "H", "W"],
     ["input 'in0' has shape [N, 3, H, W]", "H (axis 2) and W (axis 3) are dynamic", "--shape in0=1x3xHxW",
      "e.g. --shape in0=1x3x224x224", "--data"]),
    # a TFLite-style -1 with no names, in a sequence model
    ([1, -1], None, ["input 'in0' has shape [1, D1]", "D1 (axis 1) is dynamic", "--shape in0=1xD1", "e.g. --shape in0=1x128"]),
])
def test_dynamic_sizes_are_refused_with_the_option_that_gives_them(shape: list[int], names: list | None,
                                                                  words: list[str]) -> None:
    with pytest.raises(InputFileError) as e:
        bench_shapes(_inputs(shape), {}, {"in0": names} if names else None)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_given_shapes_must_fit_the_declared_ones() -> None:
    inputs = _inputs([-1, 3, -1, -1])
    assert bench_shapes(inputs, parse_shapes(["in0=2x3x48x64"])) == {"in0": [2, 3, 48, 64]}
    for bad in ("in0=1x4x48x64", "in0=1x3x48"):
        with pytest.raises(InputFileError, match="does not fit"):
            bench_shapes(inputs, parse_shapes([bad]))
    with pytest.raises(InputFileError, match="no input 'x'"):
        bench_shapes(inputs, parse_shapes(["x=1x3x8x8"]))
    for bad in ("in0", "in0=1x0x2", "in0=axb", "=1x2"):
        with pytest.raises(InputFileError, match="expected NAME=1x3x224x224"):
            parse_shapes([bad])


def test_onnx_dim_names_are_read_from_the_file(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", 64])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3])
    g = helper.make_graph([helper.make_node("ReduceMean", ["image"], ["out"], axes=[2, 3], keepdims=0)], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    assert onnx_dim_names(tmp_path / "m.onnx") == {"image": ["batch", None, "height", None]}
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert onnx_dim_names(tmp_path / "bad.onnx") == {} and onnx_dim_names(tmp_path / "m.tflite") == {}
