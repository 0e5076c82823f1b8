"""The kernel's shared types."""

from __future__ import annotations

from compress.core.types import Artifact


def test_derived_artifact_does_not_inherit_run_private_state() -> None:
    parent = Artifact(name="pruned", format="torch", metadata={"layout": "NCHW", "_onnx_export": object(),
                                                                "_parity": "x", "_targets": [1]})
    child = parent.derive(name="qat")
    assert child.metadata == {"layout": "NCHW"} and child.parent == "pruned"


def test_a_known_module_loads_once_on_first_use_and_then_is_hashed_itself() -> None:
    calls: list[int] = []
    art = Artifact(name="m", format="torch", load_module=lambda: calls.append(1) or {"weights": 1}, content_hash="h1")
    assert art.holds_module and art.content_hash == "h1" and calls == []  # nothing loaded to ask
    assert "weights" in repr(art.module) and art.module is art.module and calls == [1]
    assert art.content_hash is None and art.load_module is None  # it may change from now on
    assert art.derive(name="child").holds_module is False


def test_setting_a_module_drops_what_stood_for_it() -> None:
    art = Artifact(name="m", format="torch", load_module=lambda: "old", content_hash="h1")
    art.module = "new"
    assert art.module == "new" and art.content_hash is None and art.load_module is None
    assert Artifact(name="f", format="onnx").holds_module is False
    assert Artifact(name="t", format="torch", module=object()).holds_module is True
