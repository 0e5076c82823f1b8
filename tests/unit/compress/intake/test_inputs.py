"""Any input: batch axes, fixed inputs, named arrays, dtypes, dynamic dims resolved or refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.agent import (
    ModelInputs,
    _inputs_for,
    _load_inputs,
    batch_tied,
    feed_dicts,
    run_in_fixed_batches,
    save_inputs,
)
from bench.runtime import predict
from bench.tradeoff import _bytes_of, _recipe_input_specs
from compress.intake.data import Split, input_mismatches, load_dataset, synthetic_inputs
from compress.core.errors import InputFileError, RecipeError
from compress.intake.recipe import DataSpec, InputSpec
from compress.intake.recipe_io import parse_recipe_text
from tests.conftest import write_recipe

SPECS = [
    InputSpec(name="frames", shape=[1, -1, 4]),
    InputSpec(name="state", shape=[2, 1, 3], batch_axis=1),
    InputSpec(name="sr", shape=[], dtype="int64", batch_axis=None),
]


def _arrays(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"frames": rng.standard_normal((n, 5, 4)).astype(np.float32),
            "state": rng.standard_normal((2, n, 3)).astype(np.float32), "sr": np.array(16000, dtype=np.int64)}


# --------------------------------------------------------------------------- Split


def test_split_slices_along_each_batch_axis_and_passes_fixed_inputs_whole() -> None:
    a = _arrays()
    split = Split([a["frames"], a["state"], a["sr"]], np.arange(6), [0, 1, None], ["frames", "state", "sr"],
                  {"vad": np.arange(6) * 10})
    assert len(split) == 6
    part = split.take(np.array([4, 1]))
    assert part.x[0].shape == (2, 5, 4) and part.x[1].shape == (2, 2, 3) and part.x[2].shape == ()
    np.testing.assert_array_equal(part.x[1], a["state"][:, [4, 1]])
    assert part.targets["vad"].tolist() == [40, 10] and part.y.tolist() == [4, 1]
    assert part.x.batch_axes == [0, 1, None]  # the axes travel with the arrays
    sizes = [(b[0].shape[0], b[1].shape[1], b[2].shape) for b in split.batches(4)]
    assert sizes == [(4, 4, ()), (2, 2, ())]


def test_a_plain_list_is_batch_first_and_a_scalar_is_fixed() -> None:
    split = Split([np.zeros((3, 2)), np.array(5)])
    assert split.batch_axes == [0, None] and len(split) == 3


# --------------------------------------------------------------------------- data intake


def test_npz_arrays_are_matched_by_name_dtypes_kept_dynamic_resolved(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (10, 7)).astype(np.int64)
    mask = rng.random((10, 7)) < 0.8
    np.savez(tmp_path / "d.npz", x_mask=mask, ids=ids, y=np.arange(10) % 2, y_score=rng.random(10))
    specs = [InputSpec(name="ids", shape=[1, -1], dtype="int64"), InputSpec(name="mask", shape=[1, -1], dtype="bool")]
    data = load_dataset(DataSpec(source=str(tmp_path / "d.npz"), eval_fraction=0.3), specs)
    assert data.eval.x[0].dtype == np.int64 and data.eval.x[1].dtype == np.bool_
    assert data.eval.names == ["ids", "mask"] and set(data.eval.targets) == {"score"}
    assert specs[0].dynamic == {1: 7} and specs[0].resolved_shape(1) == [1, 7]  # the data's real length
    assert specs[0].dynamic_axes == []


def test_a_missing_input_is_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x_frames=_arrays()["frames"], sr=np.int64(8000))
    with pytest.raises(InputFileError, match=r"no array for model input 'state' \(model.inputs\[1\]\): name it x_state"):
        load_dataset(DataSpec(source=str(tmp_path / "d.npz")), [s.model_copy(deep=True) for s in SPECS])


def test_a_data_function_may_return_a_dict_by_input_name(tmp_path: Path) -> None:
    (tmp_path / "data.py").write_text(
        "import numpy as np\n"
        "def data():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return {'frames': rng.standard_normal((8, 5, 4)).astype('float32'),\n"
        "            'state': np.zeros((2, 8, 3), 'float32'), 'sr': np.int64(16000), 'y': np.arange(8.0)}\n")
    specs = [s.model_copy(deep=True) for s in SPECS]
    data = load_dataset(DataSpec(source=f"{tmp_path / 'data.py'}:data", eval_fraction=0.25), specs)
    assert len(data.eval) == 2 and data.eval.x[1].shape == (2, 2, 3) and int(data.eval.x[2]) == 16000
    assert len(data.train) == 6 and specs[0].dynamic == {1: 5}


def test_samples_along_different_axes_must_agree(tmp_path: Path) -> None:
    a = _arrays()
    a["state"] = a["state"][:, :5]
    np.savez(tmp_path / "d.npz", **a)
    with pytest.raises(InputFileError, match="x\\[0\\] has 6 samples but x\\[1\\] has 5"):
        load_dataset(DataSpec(source=str(tmp_path / "d.npz")), [s.model_copy(deep=True) for s in SPECS])


def test_synthetic_inputs_use_real_shapes_and_dtypes_and_refuse_unknown_sizes() -> None:
    specs = [InputSpec(name="ids", shape=[1, -1], dtype="int64", dynamic={1: 9}),
             InputSpec(name="mask", shape=[1, 9], dtype="bool"),
             InputSpec(name="q", shape=[1, 2], dtype="int8"),
             InputSpec(name="h", shape=[1, 1, 3], batch_axis=None)]
    split = synthetic_inputs(specs, 4)
    assert [a.shape for a in split.x] == [(4, 9), (4, 9), (4, 2), (1, 1, 3)]
    assert [a.dtype for a in split.x] == [np.int64, np.bool_, np.int8, np.float32]
    with pytest.raises(InputFileError, match=r"'ids' \(model.inputs\[0\]\) has dynamic axis 1.*dynamic: \{1: SIZE\}"):
        synthetic_inputs([InputSpec(name="ids", shape=[1, -1], dtype="int64")], 4)


def test_input_mismatches_compare_apart_from_each_batch_axis() -> None:
    a = _arrays()
    x = ModelInputs([a["frames"], a["state"], a["sr"]], [0, 1, None])
    specs = [s.model_copy(deep=True) for s in SPECS]
    assert input_mismatches(specs, x) == []
    specs[1] = InputSpec(name="state", shape=[2, 1, 4], batch_axis=1)
    (wrong,) = input_mismatches(specs, x)
    assert "input 'state'" in wrong and "(2, 4)" in wrong


# --------------------------------------------------------------------------- torch side


def test_example_inputs_respect_batch_axis_and_dtype() -> None:
    from compress.intake.models import example_inputs, ties_batch_to_one

    specs = [InputSpec(name="f", shape=[1, -1, 4], dynamic={1: 5}), InputSpec(name="s", shape=[2, 1, 3], batch_axis=1),
             InputSpec(name="sr", shape=[], dtype="int64", batch_axis=None),
             InputSpec(name="m", shape=[1, 5], dtype="bool"), InputSpec(name="q", shape=[1, 5], dtype="int8")]
    ex = example_inputs(specs, batch=3)
    assert [tuple(t.shape) for t in ex] == [(3, 5, 4), (2, 3, 3), (), (3, 5), (3, 5)]
    assert [str(t.dtype) for t in ex] == ["torch.float32", "torch.float32", "torch.int64", "torch.bool", "torch.int8"]
    assert not ties_batch_to_one(specs)
    assert ties_batch_to_one([InputSpec(name="h", shape=[1, 1, 3], batch_axis=None)])
    with pytest.raises(InputFileError, match=r"model.inputs\[0\].dynamic: \{1: SIZE\}"):
        example_inputs([InputSpec(name="f", shape=[1, -1, 4])])


def test_torch_predict_runs_a_batch_tied_model_sample_by_sample() -> None:
    import torch

    from compress.intake.models import torch_predict

    class Gru(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.gru = torch.nn.GRU(4, 3, batch_first=True)

        def forward(self, frames: torch.Tensor, state: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(frames * (sr.float() / 16000), state)
            return out[:, -1]

    m = Gru().eval()
    a = _arrays(5)
    state = np.zeros((1, 1, 3), np.float32)
    x = ModelInputs([a["frames"], state, a["sr"]], [0, None, None])
    assert batch_tied(x)
    y = torch_predict(m, x)[0]
    assert y.shape == (5, 3)
    with torch.no_grad():
        one = m(torch.from_numpy(a["frames"][2:3]), torch.from_numpy(state), torch.tensor(16000)).numpy()
    np.testing.assert_allclose(y[2:3], one, atol=1e-6)


# --------------------------------------------------------------------------- the agent's input feeding


def test_fixed_batches_never_slice_fixed_inputs() -> None:
    seen: list[tuple[tuple[int, ...], ...]] = []

    def run_one(xs: list[np.ndarray]) -> list[np.ndarray]:
        seen.append(tuple(x.shape for x in xs))
        return [xs[0].sum(axis=1)]

    x = ModelInputs([np.ones((5, 2)), np.ones((2, 5, 3)), np.array(3)], [0, 1, None])
    (out,) = run_in_fixed_batches(run_one, x, 2)
    assert out.shape == (5,) and seen == [((2, 2), (2, 2, 3), ())] * 3  # the last slice padded
    tied = ModelInputs([np.ones((3, 2)), np.zeros((1, 1, 4))], [0, None])
    seen.clear()
    run_in_fixed_batches(run_one, tied, None)
    assert seen == [((1, 2), (1, 1, 4))] * 3
    feeds = feed_dicts(x, ["a", "b", "c"], None, 4, step=3)
    assert [f["b"].shape for f in feeds] == [(2, 3, 3), (2, 1, 3)] and all(f["c"].shape == () for f in feeds)


def test_agent_inputs_keep_their_batch_axes(tmp_path: Path) -> None:
    x = ModelInputs([np.arange(6.0).reshape(3, 2), np.ones((2, 3, 4)), np.array(7)], [0, 1, None])
    save_inputs(tmp_path / "in.npz", x)
    back = _load_inputs(str(tmp_path / "in.npz"), rows=5)
    assert back.batch_axes == [0, 1, None]
    assert [a.shape for a in back] == [(5, 2), (2, 5, 4), ()]


def test_agent_random_inputs_need_a_size_for_dynamic_dims() -> None:
    class Session:
        inputs = [{"name": "img", "shape": [-1, 3, -1, -1], "dtype": "float32"},
                  {"name": "sr", "shape": [], "dtype": "int64"}]

    with pytest.raises(ValueError, match=r"'img' has dynamic dimension\(s\) \[2, 3\].*--shape"):
        _inputs_for(Session(), 1)
    xs = _inputs_for(Session(), 2, shapes={"img": [1, 3, 6, 5]})
    assert xs[0].shape == (2, 3, 6, 5) and xs[1].shape == () and xs.batch_axes == [0, None]


def test_onnx_predict_with_a_fixed_state(tmp_path: Path) -> None:
    import torch

    from bench.runtime import open_model
    from export.onnx import export_module_to_onnx

    class Step(torch.nn.Module):
        def forward(self, x: torch.Tensor, h: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
            return x * h.sum() + sr.float()

    specs = [InputSpec(name="x", shape=[1, 3]), InputSpec(name="h", shape=[2, 1, 4], batch_axis=None),
             InputSpec(name="sr", shape=[], dtype="int64", batch_axis=None)]
    export_module_to_onnx(Step().eval(), specs, tmp_path / "m.onnx")
    session = open_model(tmp_path / "m.onnx")
    assert [i["shape"] for i in session.inputs] == [[1, 3], [2, 1, 4], []]  # static: tied to batch 1
    x = ModelInputs([np.ones((5, 3), np.float32), np.full((2, 1, 4), 0.5, np.float32), np.array(2, np.int64)],
                    [0, None, None])
    np.testing.assert_allclose(predict(session, x)[0], np.full((5, 3), 6.0))


# --------------------------------------------------------------------------- recipe validation


def test_a_dynamic_dim_without_data_is_a_recipe_error_with_its_place(tmp_path: Path) -> None:
    text = """
version: 1
name: x
model:
  factory: os.path:join
  inputs:
    - {name: ids, shape: [1, -1], dtype: int64}
task: {kind: classification}
"""
    with pytest.raises(RecipeError) as exc:
        parse_recipe_text(text, write_recipe(tmp_path, text))
    (p,) = exc.value.problems
    assert p.path == "model.inputs[0].shape" and "model.inputs[0].dynamic: {1: SIZE}" in p.message
    assert p.line == 7
    ok = text.replace("dtype: int64}", "dtype: int64, dynamic: {1: 12}}")
    parse_recipe_text(ok, write_recipe(tmp_path, ok))


def test_an_onnx_model_without_inputs_is_read_for_its_shapes(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def model(dims: list) -> None:
        x = helper.make_tensor_value_info("img", TensorProto.FLOAT, dims)
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)
        g = helper.make_graph([helper.make_node("Relu", ["img"], ["out"])], "g", [x], [y])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))

    text = "version: 1\nname: x\nmodel: {onnx: m.onnx}\ntask: {kind: regression}\n"
    model(["N", 3, "H", "W"])
    with pytest.raises(RecipeError) as exc:
        parse_recipe_text(text, write_recipe(tmp_path, text))
    assert [p.path for p in exc.value.problems] == ["model.onnx", "model.onnx"]
    assert "input 'img'" in exc.value.problems[0].message and "model.inputs[0]" in exc.value.problems[0].message
    model(["N", 3, 8, 8])  # only the batch is symbolic: random inputs of the file's own shape
    src = parse_recipe_text(text, write_recipe(tmp_path, text))
    from compress.intake.models import input_specs_of

    (spec,) = input_specs_of(src.recipe.model)
    assert spec.shape == [-1, 3, 8, 8] and spec.batch_axis == 0


# --------------------------------------------------------------------------- payloads and manifests


def test_payload_counts_every_input_at_its_real_size() -> None:
    fed = [{"name": "img", "shape": [-1, 3, -1, -1], "dtype": "float32", "request_shape": [1, 3, 48, 192]},
           {"name": "ids", "shape": [-1, 16], "dtype": "int64", "request_shape": [1, 16]},
           {"name": "sr", "shape": [], "dtype": "int64", "request_shape": []}]
    assert _bytes_of(fed) == 3 * 48 * 192 * 4 + 16 * 8 + 8
    assert _bytes_of([{"name": "img", "shape": [-1, 3, -1, -1], "dtype": "float32"}]) is None  # never a silent 1

    class Model:
        def input_specs(self) -> list[InputSpec]:
            return [InputSpec(name="f", shape=[1, -1, 40], dynamic={1: 100}),
                    InputSpec(name="h", shape=[2, 1, 64], batch_axis=1),
                    InputSpec(name="sr", shape=[], dtype="int64", batch_axis=None)]

    class Recipe:
        model = Model()

    assert _bytes_of(_recipe_input_specs(Recipe())) == 100 * 40 * 4 + 2 * 64 * 4 + 8


def test_manifest_inputs_give_real_shapes_and_name_dynamic_axes() -> None:
    from export.bundle import manifest_inputs

    class Session:
        inputs = [{"name": "img", "shape": [-1, 3, -1, -1], "dtype": "float32"},
                  {"name": "sr", "shape": [], "dtype": "int64"}]

    xs = ModelInputs([np.zeros((4, 3, 48, 64), np.float32), np.array(8000)], [0, None])
    img, sr = manifest_inputs(Session(), xs, "NCHW")
    assert img["shape"] == [1, 3, 48, 64] and img["declared_shape"] == [-1, 3, -1, -1]
    assert img["dynamic_axes"] == {"0": "batch", "2": "dim2", "3": "dim3"} and img["layout"] == "NCHW"
    assert sr["shape"] == [] and sr["batch_axis"] is None and sr["dynamic_axes"] == {}
