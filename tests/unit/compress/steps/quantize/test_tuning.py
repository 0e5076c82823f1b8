"""Accuracy-aware tuning: rescaling moves (cross-layer equalization, SmoothQuant) that keep the
function, and the bisection over cumulative exclusion once the sensitivity ranking runs out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compress.core.types import Artifact
from compress.core.step import StepContext
from compress.intake.data import Dataset, Split
from compress.intake.recipe import Recipe
from compress.steps.quantize.config import QuantizeConfig
from tests.unit.compress.steps.quantize.test_step import _save, run_onnx


def hidden_outlier_mlp(path: Path, factor: float = 1000.0, unit: int = 3) -> Path:
    """Gemm(32->64) + Relu + Gemm(64->10) whose hidden ``unit`` is scaled ``factor`` times INSIDE
    the first layer's weights (row and bias) and divided back in the second layer's column: the
    same function, no separate Mul node, but an activation per-tensor int8 cannot share."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 32)) / np.sqrt(32)).astype(np.float32)
    b1 = (rng.standard_normal(64) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((10, 64)) / 8).astype(np.float32)
    w1[unit] *= factor
    b1[unit] *= factor
    w2[:, unit] /= factor
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                       (np.zeros(10, np.float32), "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return _save(graph, path)


def decisive_inputs(model: Path, n: int = 480) -> np.ndarray:
    """Inputs whose top two float scores differ by a tenth of the scores' spread: near-ties that
    any rounding flips would measure int8's noise floor, not whether an outlier is handled."""
    x = np.random.default_rng(1).standard_normal((2 * n, 32)).astype(np.float32)
    logits = run_onnx(model, x)
    top2 = np.sort(logits, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > 0.1 * logits.std()
    assert keep.sum() >= n
    return x[keep][:n]


def classification_ctx(tmp_path: Path, model: Path, x: np.ndarray) -> StepContext:
    """Labels are the float model's own decisions: float accuracy 1.0 by construction."""
    recipe = Recipe.model_validate({"version": 1, "name": "t", "model": {"onnx": str(model)},
                                    "task": {"kind": "classification"}}, context={"check_files": False})
    y = run_onnx(model, x).argmax(1)
    ev = Split([x[:400]], y[:400])
    data = Dataset(train=Split([x], y), calib=Split([x[400:464]], y[400:464]), eval=ev, source="test")

    def evaluate(art: Any) -> dict[str, Any]:
        return {"accuracy": float((run_onnx(art.path, ev.x[0]).argmax(1) == ev.y).mean())}

    return StepContext(recipe=recipe, run_dir=tmp_path, step_dir=tmp_path / "step", step_name="01-quantize",
                       data=data, reference=None, log=lambda msg: None, evaluate=evaluate)


def test_tuning_folds_an_outlier_inside_the_weights_back_with_cle(tmp_path: Path) -> None:
    from compress.steps.quantize.step import quantize

    model = hidden_outlier_mlp(tmp_path / "mlp.onnx")
    x = decisive_inputs(model)
    ctx = classification_ctx(tmp_path, model, x)
    res = quantize(Artifact(name="onnx-fp32", format="onnx", path=model),
                   QuantizeConfig(method="static", tolerable_loss=0.01), ctx)
    art = res.artifact
    d = res.details
    trials = d["trials"]
    assert d["baseline_accuracy"] == 1.0
    assert trials[0]["accuracy"] < 0.5, "full int8 loses the 63 small hidden units to the outlier's range"
    assert d["goal_met"] is True
    chosen = trials[d["chosen_trial"] - 1]
    assert chosen["loss"] <= 0.01 and chosen["config"]["equalize"] and not chosen["config"]["exclude"]
    assert "cle" in chosen["config"]["equalize"]
    cle = next(t for t in trials if t["config"]["equalize"] == ["cle"])
    assert cle["notes"]["cle"][0]["first"] == "fc1" and cle["notes"]["cle"][0]["second"] == "fc2"
    assert cle["notes"]["parity_max_rel_diff"] < 1e-4
    for t in trials:
        assert {"index", "phase", "config", "accuracy", "loss", "latency_ms", "size_bytes", "goal_met"} <= set(t)
    assert art.precision == "int8", "the goal is met at full int8, nothing kept in float"
    assert art.metadata["quantization"]["equalize"] == chosen["config"]["equalize"]
    assert ctx.evaluate(art)["accuracy"] >= 0.99
    assert sorted(p.name for p in ctx.step_dir.iterdir()) == ["model.onnx"]


def test_without_moves_the_bisection_finds_both_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same model with the rescaling moves off: sensitivity ranks fc2 alone (its input's range is
    stretched by fc1's output), which is not enough; the bisection over every quantizable node then
    keeps fc1 and fc2 in float, which is (the issue's "excluding the right two layers by hand")."""
    import compress.steps.quantize.tuning as qt
    from compress.steps.quantize.step import quantize

    monkeypatch.setattr(qt, "MOVES", ())
    model = hidden_outlier_mlp(tmp_path / "mlp.onnx")
    x = decisive_inputs(model)
    ctx = classification_ctx(tmp_path, model, x)
    res = quantize(Artifact(name="onnx-fp32", format="onnx", path=model),
                   QuantizeConfig(method="static", tolerable_loss=0.01), ctx)
    art = res.artifact
    d = res.details
    assert d["goal_met"] is True and len(d["trials"]) <= 12
    assert any(t["phase"] == "exclude-bisect" for t in d["trials"])
    assert {"fc1", "fc2"} <= set(art.metadata["quantization"]["exclude"])
    assert ctx.evaluate(art)["accuracy"] >= 0.99


def test_cle_keeps_the_function_and_equalizes_ranges(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.steps.quantize.equalize import cross_layer_equalize

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    w1[2] *= 50
    dw = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)  # depthwise
    w3 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (np.ones(8, np.float32), "b1"), (dw, "dw"),
                                                       (w3, "w3"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "dw"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("MaxPool", ["c2"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["m", "w3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])], inits)
    path = _save(graph, tmp_path / "cnn.onnx")
    model = onnx.load(str(path))
    pairs = cross_layer_equalize(model)
    assert [(p["first"], p["second"]) for p in pairs] == [("conv1", "dw"), ("dw", "conv3")]
    out = tmp_path / "cle.onnx"
    onnx.save(model, str(out))
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    ref = run_onnx(path, x)
    assert np.abs(run_onnx(out, x) - ref).max() <= 1e-4 * np.abs(ref).max()
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    r1 = np.abs(arrays["w1"]).reshape(8, -1).max(1)
    assert r1.max() / r1.min() < (np.abs(w1).reshape(8, -1).max(1).max() / np.abs(w1).reshape(8, -1).max(1).min())


def test_smoothquant_migrates_an_input_outlier_with_an_inserted_mul(tmp_path: Path) -> None:
    """A graph input with one channel 100x larger: nothing to fold into, so a Mul divides it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from compress.steps.quantize.equalize import smooth_quant

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                              [numpy_helper.from_array(w, "w")])
    path = _save(graph, tmp_path / "mm.onnx")
    x = rng.standard_normal((32, 16)).astype(np.float32)
    x[:, 5] *= 100
    model = onnx.load(str(path))
    done = smooth_quant(model, lambda t, c: np.abs(x).reshape(-1, c).max(0) if t == "x" else None)
    assert done and done[0]["node"] == "mm" and done[0]["folded_into"] == "mm_smooth"
    out = tmp_path / "smooth.onnx"
    onnx.save(model, str(out))
    onnx.checker.check_model(onnx.load(str(out)))
    ref = run_onnx(path, x)
    assert np.abs(run_onnx(out, x) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_exclusion_bisects_over_every_quantizable_node_once_the_ranking_runs_out(tmp_path: Path) -> None:
    """Goal met only with the first 6 of 10 nodes in float; the ranking scores just 2 of them."""
    from compress.steps.quantize.tuning import Goal, Plan, Search

    nodes = [f"n{i}" for i in range(10)]
    needed = set(nodes[:6])

    def quantize(plan: Plan, path: Path) -> None:
        path.write_bytes(b"x" * (100 + 5 * len(plan.exclude)))  # float nodes: slower

    accuracy: dict[Path, float] = {}

    def evaluate(path: Path) -> float:
        return accuracy[path]

    def quantize_and_score(plan: Plan, path: Path) -> None:
        quantize(plan, path)
        accuracy[path] = 1.0 if needed <= set(plan.exclude) else 0.5

    def sensitivity(path: Path, plan: Plan) -> list[tuple[str, list[str], float]]:
        return [(n, [n], 9.0 - i if i < 2 else float("nan")) for i, n in enumerate(nodes)]

    import compress.steps.quantize.tuning as qt

    search = Search(base=Plan("static", "uint8", "int8", True, None), quantize=quantize_and_score,
                    evaluate=evaluate, goal=Goal(1.0, 0.01), work=tmp_path, feed={}, sensitivity=sensitivity,
                    max_trials=12, log=lambda m: None)
    real_latency = qt.measure_latency_ms
    qt.measure_latency_ms = lambda path, feed, **kw: float(path.stat().st_size)
    try:
        chosen = search.run()
    finally:
        qt.measure_latency_ms = real_latency
    phases = [t.phase for t in search.trials]
    assert phases[:2] == ["configured", "granularity"]
    assert phases.count("exclude") == 2, "one trial per ranked unit"
    bisect = [t for t in search.trials if t.phase == "exclude-bisect"]
    assert bisect[0].plan.exclude == tuple(nodes), "first: does excluding every quantizable node help at all?"
    assert len(bisect) <= 4 and len(search.trials) <= 12
    assert chosen.goal_met and set(chosen.plan.exclude) == needed, "the smallest prefix that meets the goal"


@pytest.mark.parametrize("max_trials", [3])
def test_moves_that_change_nothing_spend_no_trial(tmp_path: Path, max_trials: int) -> None:
    """A single MatMul on a graph input without outliers: CLE finds no pair, SmoothQuant no outlier."""
    from compress.steps.quantize.step import quantize
    from tests.unit.compress.steps.quantize.test_step import make_ctx, outlier_model, vectors

    model = outlier_model(tmp_path / "mm.onnx", outliers=0)
    ctx = make_ctx(tmp_path, vectors(), model)
    res = quantize(Artifact(name="onnx-fp32", format="onnx", path=model),
                   QuantizeConfig(method="static", tolerable_loss=0.0, max_trials=max_trials), ctx)
    assert all(not t["config"]["equalize"] for t in res.details["trials"])
