"""Parity and fidelity results cached by both models' hashes; torch models hashed as they reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.parity import compare_outputs
from compress.core.report_schema import Parity
from compress.runner.checkcache import CheckCache
from compress.runner.stepkey import model_hash, torch_model_hash
from compress.runner.runcodec import save_module
from compress.runner.evalcache import EvalCache
from compress.runner.stepkey import hash_state_dict


class Linear3(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]  # unannotated: fx keeps annotations as import strings
        return self.lin(x)


def _graph_with_a_plain_constant(value: float) -> torch.fx.GraphModule:
    """A graph module reading a tensor that is a plain attribute, as pt2e's ``_tensor_constant0``."""
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(Linear3())
    gm._tensor_constant0 = torch.full((3,), value)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(out):
        const = gm.graph.get_attr("_tensor_constant0")
        added = gm.graph.call_function(torch.add, (out.args[0], const))
    out.args = (added,)
    gm.recompile()
    return gm


def test_a_graph_module_hashes_the_same_fresh_and_read_back(tmp_path: Path) -> None:
    fresh = _graph_with_a_plain_constant(1.0)
    save_module(fresh, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert hash_state_dict(fresh) != hash_state_dict(loaded)  # what the plain state_dict hash gets wrong
    assert torch_model_hash(fresh) == torch_model_hash(loaded)
    assert "_tensor_constant0" not in fresh._buffers and "_tensor_constant0" in fresh.__dict__  # left as it was
    # the constant counts: another value is another model
    assert torch_model_hash(_graph_with_a_plain_constant(2.0)) != torch_model_hash(fresh)
    plain = Linear3()
    assert torch_model_hash(plain) == hash_state_dict(plain)  # ordinary modules: the step cache's hash


class _FakeRunCache:
    """The part of RunCache a CheckCache uses, over a real EvalCache."""

    def __init__(self, root: Path, cpu: str = "avx2", enabled: bool = True) -> None:
        self.evals = EvalCache(root, enabled=enabled)
        self.enabled = enabled
        self.cpu = cpu

    def cpu_flags(self) -> list[str]:
        return [f"host.flags={self.cpu}"]

    def eval_get(self, art_hash: str, spec: str) -> dict[str, Any] | None:
        return self.evals.get(art_hash, "data", spec)

    def eval_put(self, art_hash: str, spec: str, result: dict[str, Any]) -> None:
        self.evals.put(art_hash, "data", spec, result)


def _parity(out: np.ndarray) -> Parity:
    ref = np.eye(4, dtype=np.float32)
    return compare_outputs(ref, out, "parent", "classification", tolerance=1e-3, min_agreement=0.99)


def test_a_check_reads_back_what_was_measured_under_the_same_models_settings_and_cpu(tmp_path: Path) -> None:
    checks = CheckCache(_FakeRunCache(tmp_path))
    parity = _parity(np.eye(4, dtype=np.float32) + 1e-4)
    settings = {"tolerance": 1e-3}
    assert checks.get("parity", ("a", "b"), settings, Parity, "parent") is None
    checks.put("parity", ("a", "b"), settings, parity)
    assert checks.get("parity", ("a", "b"), settings, Parity, "parent") == parity
    renamed = checks.get("parity", ("a", "b"), settings, Parity, "pruned")
    assert renamed.reference == "pruned" and renamed.max_abs_diff == parity.max_abs_diff
    for ids, other_settings, check in ((("a", "c"), settings, "parity"), (("c", "b"), settings, "parity"),
                                       (("a", "b"), {"tolerance": 1e-2}, "parity"), (("a", "b"), settings, "fidelity")):
        assert checks.get(check, ids, other_settings, Parity, "parent") is None
    assert CheckCache(_FakeRunCache(tmp_path, cpu="avx512_vnni")).get("parity", ("a", "b"), settings, Parity, "p") is None
    assert checks.get("parity", (None, "b"), settings, Parity, "parent") is None


def test_what_json_cannot_carry_and_a_disabled_cache_store_nothing(tmp_path: Path) -> None:
    nan = _parity(np.eye(4, dtype=np.float32)).model_copy(update={"cosine": float("nan")})
    checks = CheckCache(_FakeRunCache(tmp_path))
    checks.put("parity", ("a", "b"), {}, nan)
    assert checks.get("parity", ("a", "b"), {}, Parity, "parent") is None
    off = CheckCache(_FakeRunCache(tmp_path / "off", enabled=False))
    off.put("parity", ("a", "b"), {}, _parity(np.eye(4, dtype=np.float32)))
    assert off.get("parity", ("a", "b"), {}, Parity, "parent") is None and not (tmp_path / "off").exists()
    assert CheckCache(None).get("parity", ("a", "b"), {}, Parity, "parent") is None


def test_model_hash_of_files_and_torch_artifacts(tmp_path: Path) -> None:
    from compress.core.types import Artifact

    f = tmp_path / "m.onnx"
    f.write_bytes(b"model")
    a = Artifact(name="m", format="onnx", path=f)
    assert model_hash(a) == model_hash(Artifact(name="other", format="onnx", path=f))
    m = Linear3()
    assert model_hash(Artifact(name="t", format="torch", module=m)) == model_hash(m)
    with pytest.raises(OSError):
        model_hash(Artifact(name="gone", format="onnx", path=tmp_path / "gone.onnx"))
