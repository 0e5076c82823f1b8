"""The numpy-only reference (drift_check.py in every bundle) computes what bench/drift.py computes, to 1e-6."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.drift import compare
from bench.fingerprint import make_fingerprint
from export import drift_reference
from tests.conftest import ROOT
from tests.unit.test_layering import imports_of, modules

REFERENCE = ROOT / "export" / "drift_reference.py"


def _data(rng: np.random.Generator, kind: str, n: int, shift: float, scale: float) -> np.ndarray:
    if kind == "tokens":
        return rng.zipf(1.5 + shift, size=(n, 6)).clip(0, 300).astype(np.int64)
    shape = {"table": (n, 5), "nchw": (n, 2, 5, 5), "nhwc": (n, 5, 5, 2), "big": (n, 3, 20, 20)}[kind]
    return (rng.normal(shift, scale, size=shape)).astype(np.float32)


def _both(kind: str, seed: int, shift: float, scale: float, n_new: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    x = _data(rng, kind, 120, 0.0, 1.0)
    k = 4
    w = rng.standard_normal((int(np.prod(x.shape[1:])), k))
    y = x.reshape(len(x), -1).astype(np.float64) @ w
    layout = "NHWC" if kind == "nhwc" else "NCHW"
    fp = json.loads(json.dumps(make_fingerprint([{"name": "x", "batch_axis": 0}], [x],
                                                [{"name": "y", "classification": True, "logits": True}], [y],
                                                layout=layout)))
    new = _data(rng, kind, n_new, shift, scale)
    y_new = new.reshape(len(new), -1).astype(np.float64) @ w
    tool = compare(fp, [new], [y_new]).to_json()
    ref = drift_reference.check(fp, {"x": new}, {"y": y_new})
    return tool, ref


def _assert_same(tool: dict, ref: dict) -> None:
    assert tool["verdict"] == ref["verdict"]
    assert len(tool["checks"]) == len(ref["checks"])
    for a, b in zip(tool["checks"], ref["checks"]):
        assert (a["side"], a["tensor"], a["name"]) == (b["side"], b["tensor"], b["name"])
        assert abs(a["psi"] - b["psi"]) <= 1e-6
        assert (a["ks"] is None) == (b["ks"] is None)
        if a["ks"] is not None:
            assert abs(a["ks"] - b["ks"]) <= 1e-6 and abs(a["ks_critical"] - b["ks_critical"]) <= 1e-6
        assert (a["status"] == "drift") == (b["status"] == "drift")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["table", "nchw", "nhwc", "tokens", "big"]), seed=st.integers(0, 2**31),
       shift=st.sampled_from([0.0, 0.05, 0.5]), scale=st.sampled_from([1.0, 1.3]), n_new=st.integers(2, 150))
def test_reference_equals_the_toolkit(kind: str, seed: int, shift: float, scale: float, n_new: int) -> None:
    _assert_same(*_both(kind, seed, shift, scale, n_new))


def test_reference_imports_nothing_of_the_project() -> None:
    known = modules(ROOT)
    assert imports_of("export.drift_reference", known["export.drift_reference"], known) == set()
    text = REFERENCE.read_text()
    assert "import numpy as np" in text and not any(f"import {p}" in text for p in ("scipy", "torch", "bench"))


def test_reference_runs_as_a_script(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.random((200, 1, 4, 4)).astype(np.float32)
    fp = make_fingerprint([{"name": "x", "batch_axis": 0}], [x], [], [], layout="NCHW")
    (tmp_path / "fingerprint.json").write_text(json.dumps(fp))
    np.savez(tmp_path / "same.npz", x=rng.random((200, 1, 4, 4)).astype(np.float32))
    np.savez(tmp_path / "bright.npz", x=(1.3 * rng.random((200, 1, 4, 4))).astype(np.float32))
    np.savez(tmp_path / "wrong.npz", x=rng.random((200, 1, 3, 4)).astype(np.float32))

    def run(name: str, *extra: str) -> subprocess.CompletedProcess:
        # run from a folder with nothing of edgepack on the path: the file stands alone
        return subprocess.run([sys.executable, str(REFERENCE), "fingerprint.json", name, *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})

    same, bright, wrong = run("same.npz"), run("bright.npz", "--json"), run("wrong.npz")
    assert same.returncode == 0 and same.stdout.strip().endswith("no drift"), same.stderr
    assert bright.returncode == 1 and json.loads(bright.stdout)["verdict"] == "drift"
    assert wrong.returncode == 2 and "samples of shape [1, 3, 4]" in wrong.stderr and "Traceback" not in wrong.stderr
    tool = compare(fp, [np.load(tmp_path / "bright.npz")["x"]]).to_json()
    _assert_same(tool, json.loads(bright.stdout))


def test_the_docs_show_the_kotlin_snippet_of_the_model_card() -> None:
    from export.bundle_drift import KOTLIN_SNIPPET

    assert KOTLIN_SNIPPET in (ROOT / "docs" / "drift.md").read_text()
