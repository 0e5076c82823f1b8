"""Full-int8 TFLite pays off: the MobileNetV2-style model runs at least 1.8x faster in int8
than in fp32 under LiteRT, one thread.

Both files come from the real export step (``export.tflite.export_tflite``: litert-torch,
then ai-edge-quantizer static int8 calibrated on the digits at 64x64), from the trained
weights in ``recipes/models/mobilenet_digits.pt`` when they exist (random weights
otherwise: the speed of a dense CNN does not depend on its weights). Two measurements,
each side by side and interleaved (fp32, int8, fp32, int8...), medians compared:

1. In one process, through :class:`bench.agent.TfliteSession` (the runtime the runner,
   the local target and remote boards share), blocks of runs alternating.
2. Through the run's own schedule (``tests/benchmarks/harness.py``: five fresh agent
   processes per model, interleaved, merged; the ratio of pooled medians with its paired
   hierarchical-bootstrap CI): the figures the report shows, and the claim.

Run: ``python -m pytest tests/benchmarks/test_tflite_speed.py --benchmark-only -s``
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.benchmarks.harness import describe, interleaved, p50, speedup
from tests.conftest import ROOT, write_recipe

CLAIM = 1.8
MODELS = ROOT / "recipes" / "models"
WEIGHTS = MODELS / "mobilenet_digits.pt"


@pytest.fixture(scope="module")
def mobilenet_tflite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fp32 and int8 .tflite of the MobileNetV2-style model, made by the export step."""
    from compress.core.step import StepContext
    from compress.intake.data import load_dataset
    from compress.intake.models import load_model
    from compress.intake.recipe import TfliteExportConfig
    from compress.intake.recipe_io import parse_recipe
    from export.tflite import export_tflite

    folder = tmp_path_factory.mktemp("mbv2")
    weights = f"\n          weights: {WEIGHTS}" if WEIGHTS.is_file() else ""
    path = write_recipe(folder, f"""
        version: 1
        name: mobilenet-speed
        model:
          factory: {MODELS / 'mobilenet.py'}:mobilenet_v2{weights}
          input_shape: [1, 1, 64, 64]
        task: {{kind: classification}}
        data: {{source: "builtin:digits", image_size: 64, calibration_samples: 64, max_eval: 64}}
    """)
    recipe = parse_recipe(path).recipe
    ctx = StepContext(recipe=recipe, run_dir=folder, step_dir=folder / "tflite", step_name="export:tflite",
                      data=load_dataset(recipe.data), reference=None, log=print, evaluate=lambda thing: {})
    arts = export_tflite(load_model(recipe.model), TfliteExportConfig(precisions=["fp32", "int8"]), ctx).artifacts
    return {"paths": {a.precision: a.path for a in arts}, "x": ctx.data.eval.x[0][:1],
            "weights": "trained" if weights else "random"}


def _call(path: Path, x: np.ndarray) -> Any:
    """A zero-argument inference on a one-thread LiteRT session (XNNPACK on, as in the agent)."""
    from bench.agent import TfliteSession

    session = TfliteSession(str(path), 1)
    assert session.runtime == "ai-edge-litert"
    prepared = getattr(session, "prepared", None)
    return prepared([x]) if prepared is not None else functools.partial(session.run, [x])


def in_process_ratio(paths: dict[str, Path], x: np.ndarray, runs: int, rounds: int) -> tuple[float, float, float]:
    """(fp32 median ms, int8 median ms, fp32/int8) from interleaved blocks of runs."""
    calls = {p: _call(paths[p], x) for p in ("fp32", "int8")}
    times: dict[str, list[int]] = {"fp32": [], "int8": []}
    for call in calls.values():
        for _ in range(50):
            call()
    for r in range(rounds):
        # Alternate which goes first, so neither always runs on a cache the other warmed.
        for p in (("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")):
            call = calls[p]
            for _ in range(runs):
                t = time.perf_counter_ns()
                call()
                times[p].append(time.perf_counter_ns() - t)
    fp32, int8 = (float(np.median(times[p])) / 1e6 for p in ("fp32", "int8"))
    return fp32, int8, fp32 / int8


def fresh_process_ratio(paths: dict[str, Path], x: np.ndarray, runs: int, repeats: int) -> tuple[float, float, float, str]:
    """(fp32 p50 ms, int8 p50 ms, fp32/int8 with CI text) through the interleaved, repeated schedule."""
    res = interleaved({p: paths[p] for p in ("fp32", "int8")}, [x], repeats, runs)
    assert all(r.runtime.startswith("ai-edge-litert") for r in res.values())
    ratio, lo, hi = speedup(res, "int8", "fp32")
    return p50(res, "fp32"), p50(res, "int8"), ratio, f"[{lo:.2f}, {hi:.2f}]\n{describe(res)}"


def test_int8_faster_than_fp32_in_process(benchmark: Any, mobilenet_tflite: dict[str, Any]) -> None:
    fp32, int8, ratio = benchmark.pedantic(in_process_ratio, args=(mobilenet_tflite["paths"], mobilenet_tflite["x"],
                                                                   200, 11), rounds=1, iterations=1)
    print(f"\nMobileNetV2-style 1x1x64x64 ({mobilenet_tflite['weights']} weights), LiteRT 1 thread, in one process: "
          f"fp32 {fp32:.4f} ms, int8 {int8:.4f} ms, int8 is {ratio:.2f}x faster (claim >= {CLAIM}x)")
    benchmark.extra_info.update({"fp32_ms": fp32, "int8_ms": int8, "ratio": ratio})
    assert ratio >= CLAIM


def test_int8_faster_than_fp32_fresh_processes(benchmark: Any, mobilenet_tflite: dict[str, Any]) -> None:
    fp32, int8, ratio, ci = benchmark.pedantic(fresh_process_ratio, args=(mobilenet_tflite["paths"],
                                                                          mobilenet_tflite["x"], 300, 5),
                                               rounds=1, iterations=1)
    print(f"\nMobileNetV2-style, 5 interleaved fresh agent processes x 300 runs each: "
          f"fp32 {fp32:.4f} ms, int8 {int8:.4f} ms, int8 is {ratio:.2f}x {ci.splitlines()[0]} faster (claim >= {CLAIM}x)"
          f"\n" + "\n".join(ci.splitlines()[1:]))
    benchmark.extra_info.update({"fp32_ms": fp32, "int8_ms": int8, "ratio": ratio})
    assert ratio >= CLAIM
