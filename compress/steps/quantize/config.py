"""The ``quantize`` step's recipe config (registered with the step in :mod:`compress.steps.quantize.step`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from compress.core.checks import Bool, Count, StrictModel


class QuantizeConfig(StrictModel):
    """Post-training quantization of the ONNX model (or the torch model with engine: inc)."""

    # Fields that mean something only for some values of another (a search samples them only then):
    # calibration is static quantization's; dynamic, fp16 and weight-only quantization calibrate nothing.
    APPLIES_WHEN: ClassVar[dict[str, tuple[str, tuple[Any, ...]]]] = {
        "calibration": ("method", ("static",)),
        "calibration_samples": ("method", ("static",)),
    }

    method: Literal["static", "dynamic", "fp16", "weight_only"] = "static"
    engine: Literal["ort", "inc"] = "ort"
    target: Literal["auto", "x86", "arm"] = "auto"
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: Count | None = None
    activation_type: Literal["uint8", "int8"] | None = None
    weight_type: Literal["int8", "uint8"] | None = None
    per_channel: Bool = True
    exclude: list[str] = Field(default_factory=list, description="node names kept in float")
    tolerable_loss: float | None = Field(None, ge=0, le=1e6)
    loss_kind: Literal["absolute", "relative"] = "absolute"
    require_goal: Bool = False
    max_trials: int = Field(12, ge=1, le=1000)
    name: str | None = Field(None, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$",
                             description="artifact name (default onnx-<method>)")
