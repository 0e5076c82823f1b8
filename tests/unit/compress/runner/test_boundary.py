"""The runner owns the format boundary: a step gets the format it asks for, converted once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from compress.core.errors import StepError
from compress.core.step import StepKind, StepResult
from compress.core.types import Artifact
from compress.runner.stepping import SteppingMixin


def _kind(accepts: tuple[str, ...], input_format: Any = None) -> StepKind:
    return StepKind("k", lambda *a: StepResult([]), object, accepts, input_format=input_format)


@pytest.mark.parametrize(("accepts", "current", "wanted"), [
    (("torch",), "torch", "torch"),
    (("onnx",), "torch", "onnx"),
    (("onnx", "torch"), "torch", "torch"),  # the input's own format when accepted
    (("onnx", "torch"), "onnx", "onnx"),
    (("onnx",), "onnx", "onnx"),
])
def test_default_input_format(accepts: tuple[str, ...], current: str, wanted: str) -> None:
    assert _kind(accepts).wants(None, current) == wanted


def test_a_config_chooses_its_format() -> None:
    kind = _kind(("onnx", "torch"), lambda cfg: "torch" if cfg.engine == "inc" else "onnx")
    assert kind.wants(SimpleNamespace(engine="ort"), "torch") == "onnx"
    assert kind.wants(SimpleNamespace(engine="inc"), "torch") == "torch"


class _Runner(SteppingMixin):
    def __init__(self) -> None:
        self.exported: list[str] = []

    def ensure_onnx(self, art: Artifact) -> Artifact:
        self.exported.append(art.name)
        return art.derive(name="onnx-fp32", format="onnx", step="export:onnx")


def test_torch_is_exported_at_the_boundary_and_nothing_else_converts() -> None:
    runner = _Runner()
    torch_art = Artifact(name="student", format="torch")
    got = runner.at_boundary(_kind(("onnx",)), None, torch_art, "02-quantize")
    assert (got.name, got.format, got.parent, runner.exported) == ("onnx-fp32", "onnx", "student", ["student"])
    assert runner.at_boundary(_kind(("torch",)), None, torch_art, "03-prune") is torch_art
    with pytest.raises(StepError, match="accepts torch models, got onnx"):
        runner.at_boundary(_kind(("torch",)), None, Artifact(name="m", format="onnx"), "03-prune")
    with pytest.raises(StepError, match="got tflite"):
        runner.at_boundary(_kind(("onnx",)), None, Artifact(name="t", format="tflite"), "04-quantize")
    assert runner.exported == ["student"]
