"""Step kinds and exports -> the functions that run them, imported lazily.

A step function has the signature ``(artifact, config, ctx) -> Artifact``. Its input
format is declared here so the runner converts (torch -> ONNX) at the boundary; a
``check`` function, if given, validates the config against the loaded model before any
work starts and returns a list of ``(dotted_subpath, message)`` problems.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StepEntry:
    run: str
    accepts: tuple[str, ...]
    check: str | None = None
    needs_train_data: bool = False


STEPS: dict[str, StepEntry] = {
    "distill": StepEntry("compress.steps.distill:distill", ("torch",), "compress.steps.distill:check", needs_train_data=True),
    "prune": StepEntry("compress.steps.prune:prune", ("torch",), "compress.steps.prune:check"),
    "qat": StepEntry("compress.steps.qat:qat", ("torch",), "compress.steps.qat:check", needs_train_data=True),
    "quantize": StepEntry("compress.steps.quantize.step:quantize", ("onnx", "torch"), "compress.steps.quantize.step:check"),
}

EXPORTS: dict[str, str] = {
    "onnx": "export.onnx:export_onnx",
    "tflite": "export.tflite:export_tflite",
}


def load(ref: str) -> Callable[..., Any]:
    """Import ``package.module:function``."""
    module, _, fn = ref.partition(":")
    return getattr(importlib.import_module(module), fn)
