"""The kernel's shared types."""

from __future__ import annotations

from compress.core.types import Artifact


def test_derived_artifact_does_not_inherit_run_private_state() -> None:
    parent = Artifact(name="pruned", format="torch", metadata={"layout": "NCHW", "_onnx_export": object(),
                                                                "_parity": "x", "_targets": [1]})
    child = parent.derive(name="qat")
    assert child.metadata == {"layout": "NCHW"} and child.parent == "pruned"
