"""Step kinds and exports -> the functions that run them.

Each step module registers its function and its config class once with
:func:`compress.core.step.register_step` (kind, config class, accepted input formats, its
pre-run check); importing this module imports the step modules, the only list of kinds. The
recipe's ``steps:`` validation and ``compress schema`` read the same registry, so a new kind
is one module (plus its import below).
The runner converts (torch -> ONNX) at the boundary a step's ``accepts`` declares; recipe
validation reads ``needs_train_data`` and ``accepts`` from the same entries. The step
modules import no torch, ONNX or TensorFlow at import time.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import compress.steps.distill
import compress.steps.prune
import compress.steps.qat
import compress.steps.quantize.step  # noqa: F401  (each registers its kind on import)
from compress.core.step import STEPS, StepKind, noting

__all__ = ["EXPORTS", "STEPS", "StepKind", "load"]

EXPORTS: dict[str, str] = {
    "onnx": "export.onnx:export_onnx",
    "tflite": "export.tflite:export_tflite",
}


def load(ref: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (an export), wrapped like a registered step: an error
    escaping it carries the advisories it gave before (:func:`compress.core.step.noting`)."""
    module, _, fn = ref.partition(":")
    return noting(getattr(importlib.import_module(module), fn))
