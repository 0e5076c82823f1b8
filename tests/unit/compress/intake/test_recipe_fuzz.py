"""A recipe fuzzer: mutated recipes through ``compress validate``, in process.

Every mutation of a valid recipe (values of other types, huge numbers, non-finite floats,
long strings, unknown keys, deleted keys, deep nesting, alias bombs, broken YAML) must end
in ``ok`` (exit 0) or a recipe error (exit 2): never another exception, never a traceback,
never ``ok`` for a recipe the schema refuses, within a bounded time and memory per case.
"""

from __future__ import annotations

import copy
import resource
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from compress.cli import app
from compress.intake.recipe import Recipe

BASE = textwrap.dedent("""
    version: 1
    name: fuzz
    seed: 3
    model:
      factory: net.py:build
      kwargs: {width: 8}
      weights: w.pt
      inputs:
        - {name: x, shape: [1, 3, 16, 16], dtype: float32}
      outputs: [{name: logits, task: classification, weight: 1.0}]
      timeout_s: 60
    task: {kind: classification, labels: [a, b, c], top_k: 2}
    data: {source: data.npz, eval_fraction: 0.25, calibration_samples: 16, seed: 1, max_eval: 100,
           normalize: {mean: [0.5, 0.5, 0.5], std: [0.2, 0.2, 0.2], scale: 0.0039}}
    steps:
      - distill: {width: 0.5, epochs: 1, lr: 0.001, temperature: 4, alpha: 0.7}
      - prune: {ratio: 0.3, epochs: 1, iterative_steps: 2, round_to: 8}
      - qat: {epochs: 1, freeze_bn_epoch: 0}
    export: [onnx, {tflite: {precisions: [fp32, int8], calibration_samples: 8}}]
    parity: {atol: 0.0001, min_agreement: 0.99, fail: true}
    gate: warn
    fidelity: {int8: {min_agreement: 0.95, min_sqnr_db: 15}, artifacts: {onnx-fp32: {min_cosine: 0.99}}}
    bench:
      targets: [local, 'ssh:pi', 'estimate:rpi4']
      threads: [1, 2]
      warmup: 2
      runs: 5
      repeats: 2
      batch_sizes: [1, 4]
      ssh: {pi: {host: 127.0.0.1, user: pi, port: 22, timeout_s: 5}}
    tradeoff:
      network: [wifi, lab]
      networks: {lab: {rtt_ms: 2, up_mbps: 50, down_mbps: 50}}
      cloud: {price_per_hour: 0.1, cores: 2, batch: 8}
      budgets: {latency_ms: 50, size_mb: 10}
      raw_input_bytes: 20000
      requests_per_day: 1000
    package: {artifact: onnx-fp32, platform: android, golden_vectors: 2}
""")

MAX_SECONDS = 5.0
MAX_PEAK_MB = 64.0
MAX_RSS_GROWTH_MB = 1024.0
"""Growth of the process's high-water mark over the whole fuzz: the 1.5 KB alias bomb once took 9 GB."""

runner = CliRunner()


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


RSS_BEFORE_MB = _max_rss_mb()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "net.py").write_text("def build(width=8):\n    raise RuntimeError('validate never calls this')\n")
    (d / "w.pt").write_bytes(b"PK\x03\x04 weights")
    (d / "data.npz").write_bytes(b"PK\x03\x04 arrays")
    # what validate may import (device profiles, networks, onnx for an ONNX model) is imported
    # once here, outside the measured cases: an import under tracemalloc is slow and large
    import importlib

    for name in ("devices.estimate", "bench.tradeoff", "compress.intake.models", "onnx", "rich.console"):
        importlib.import_module(name)
    (d / "base.yaml").write_text(BASE)
    assert runner.invoke(app, ["validate", str(d / "base.yaml")]).exit_code == 0
    return d


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in the data (mapping keys and list indices), the root included."""
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, at + (i,))
    return out


def _get(node: Any, at: tuple[Any, ...]) -> Any:
    for p in at:
        node = node[p]
    return node


scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(["yes", "no", "true", "1", "", "~nosuchuser/w.pt", "/proc/self/mem",
                                                "/dev/zero", ".", "a" * 300 + ".pt", "x" * 100_000]),
    st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, -1, 1, 2**31, 2**63, 2**100, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324, float("nan")]),
    st.text(max_size=40),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bool]:
    """A mutated recipe, as YAML text, and whether to trace its memory (tracemalloc makes a case 3x slower).

    Every case with a structural extra (alias bomb, deep nesting, many keys, a cycle) is
    traced, and one in four of the others.
    """
    data = yaml.safe_load(BASE)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        at = draw(st.sampled_from(paths))
        target = _get(data, at)
        action = draw(st.sampled_from(["replace", "add", "delete", "wrap"]))
        if action == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=12))] = draw(values)
        elif action == "delete" and at:
            parent = _get(data, at[:-1])
            del parent[at[-1]]
        elif action == "wrap" and at:
            _get(data, at[:-1])[at[-1]] = draw(st.sampled_from([[target], {"x": target}, [[target]]]))
        elif at:
            _get(data, at[:-1])[at[-1]] = draw(values)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    extra = draw(st.sampled_from(["none"] * 6 + ["bomb", "deep", "dup", "garbage", "many_keys", "cycle"]))
    if extra == "bomb":
        n = draw(st.integers(5, 12))
        bomb = ["b0: &b0 [x, x, x, x, x, x, x, x, x]"]
        bomb += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, n)]
        text += "bomb:\n" + textwrap.indent("\n".join(bomb), "  ") + "\n"
    elif extra == "deep":
        d = draw(st.integers(50, 3000))
        text += "deep: " + "[" * d + "]" * d + "\n"
    elif extra == "dup":
        text += "name: again\n"
    elif extra == "garbage":
        text += draw(st.text(max_size=30)) + "\n"
    elif extra == "many_keys":
        text += "bench_extra:\n" + "".join(f"  k{i}: {i}\n" for i in range(draw(st.integers(100, 3000))))
    elif extra == "cycle":
        text += "loop: &loop [1, *loop]\n"
    return text, extra not in ("none", "dup", "garbage") or draw(st.integers(0, 3)) == 0


def _schema_valid(text: str, folder: Path) -> bool | None:
    """Whether pydantic alone accepts the recipe (None: the text is not a YAML mapping we can judge)."""
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        Recipe.model_validate(copy.deepcopy(data), context={"base_dir": folder.resolve()})
    except ValidationError:
        return False
    except (RecursionError, ValueError):
        return None
    return True


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated())
def test_validate_never_crashes_on_a_mutated_recipe(folder: Path, case: tuple[str, bool]) -> None:
    text, traced = case
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    if traced:
        tracemalloc.start()
    t0 = time.process_time()  # CPU time: the machine is shared, wall time says more about neighbours
    try:
        res = runner.invoke(app, ["validate", str(path)])
    finally:
        seconds = time.process_time() - t0
        peak = tracemalloc.get_traced_memory()[1] if traced else 0
        tracemalloc.stop()
    assert res.exit_code in (0, 2), (res.exit_code, res.output[-2000:], repr(res.exception))
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "internal error" not in res.output
    # tracemalloc slows the YAML parser of a deep case ~6x (measured: 0.39 s -> 2.59 s CPU)
    assert seconds < MAX_SECONDS * (3 if traced else 1), seconds
    assert peak / 2**20 < MAX_PEAK_MB, peak / 2**20
    assert _max_rss_mb() < RSS_BEFORE_MB + MAX_RSS_GROWTH_MB  # every case, traced or not
    assert len(res.output) < 100_000  # capped: never a 100 kB value or thousands of problems repeated
    if res.exit_code == 0:
        assert _schema_valid(text, folder) is True, res.output


def test_the_base_recipe_is_valid(folder: Path) -> None:
    (folder / "base.yaml").write_text(BASE)
    res = runner.invoke(app, ["validate", str(folder / "base.yaml")])
    assert res.exit_code == 0, res.output
