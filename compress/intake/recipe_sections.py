"""Recipe sections beside the pipeline: benchmark devices, the cloud-vs-device trade-off, packaging.

Part of the recipe schema (:mod:`compress.intake.recipe` re-exports every class); kept apart so that
each module stays readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from compress.core.checks import BatchSize, StrictModel, Threads, check_path_form, resolve_file


# --------------------------------------------------------------------------- tradeoff, package


# Typical figures, deliberately round; a recipe can override any of them under
# tradeoff.networks. Medians of the kind reported by public mobile network surveys
# (e.g. Opensignal / Ookla reports): a user's own numbers are better.
NETWORKS: dict[str, dict[str, float]] = {
    "wifi": {"rtt_ms": 20.0, "up_mbps": 20.0, "down_mbps": 50.0},
    "5g": {"rtt_ms": 30.0, "up_mbps": 15.0, "down_mbps": 100.0},
    "4g": {"rtt_ms": 60.0, "up_mbps": 5.0, "down_mbps": 20.0},
    "3g_poor": {"rtt_ms": 300.0, "up_mbps": 0.3, "down_mbps": 1.0},
}


class CloudConfig(StrictModel):
    """The cloud side of the trade-off: a server's price and how it batches."""

    price_per_hour: float = Field(0.10, ge=0, le=1e6, description="USD per hour of one server")
    cores: Threads = 2
    profile: str | None = Field(None, description="a device profile of the server; default: measured here")
    batch: BatchSize = 8


class BudgetConfig(StrictModel):
    """Limits an on-device artifact must keep to be recommended."""

    latency_ms: float | None = Field(None, gt=0, le=1e9)
    size_mb: float | None = Field(None, gt=0, le=1e9)
    memory_mb: float | None = Field(None, gt=0, le=1e9)


class NetworkProfile(StrictModel):
    """A network between the app and the cloud."""

    rtt_ms: float = Field(..., gt=0, le=1e6)
    up_mbps: float = Field(..., ge=1e-3, le=1e7)
    down_mbps: float = Field(..., ge=1e-3, le=1e7)


class TradeoffConfig(StrictModel):
    """Cloud vs device: over which networks, against which server, within which budgets."""

    network: list[str] = Field(default_factory=lambda: ["wifi", "4g"], description="wifi, 5g, 4g, 3g_poor or a name under networks")
    networks: dict[str, NetworkProfile] = Field(default_factory=dict, description="extra or overriding network profiles")
    device: str | None = Field(None, description="target used for the on-device side (default: first non-local)")
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)
    raw_input_bytes: int | None = Field(None, ge=1, le=2**40, description="size of what the app uploads, e.g. a JPEG")
    requests_per_day: int | None = Field(None, ge=1, le=10**12)


class PackageConfig(StrictModel):
    """The app bundle made after the run (``compress package`` makes one later)."""

    artifact: str
    platform: Literal["android", "ios", "generic"] = "generic"
    output: Path | None = None
    golden_vectors: int = Field(4, ge=1, le=10_000)

    @field_validator("output")
    @classmethod
    def _output(cls, v: Path | None) -> Path | None:
        return None if v is None else check_path_form(v, "package.output")


# --------------------------------------------------------------------------- shadow


class ShadowConfig(StrictModel):
    """At the end of the run, each artifact beside the baseline export of its format, as ``compress shadow`` does.

    The baseline of an ONNX artifact is the run's fp32 ONNX export, of a TFLite artifact its fp32
    TFLite export (the ONNX one when there is none). A failed verdict makes the artifact and the
    run ``degraded`` (exit 1 unless ``gate: warn``), like a fidelity gate.
    """

    inputs: Path | None = Field(None, description="logged inputs .npz (x, optional y); default: the eval split")
    labels: Path | None = Field(None, description="labels .npy or .npz (its y); default: y of inputs, or the "
                                                  "eval split's labels")
    max_flip_rate: float = Field(0.01, ge=0, le=1, description="largest share of changed decisions, per output")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="against the labels; null: off")
    max_ece_increase: float | None = Field(None, ge=0, le=1, description="against the labels (15 bins); null: off")
    max_confidence_shift: float | None = Field(None, ge=0, le=1,
                                               description="mean |p_candidate - p_baseline| of the baseline's "
                                                           "decision; null: off")
    artifacts: list[str] | Literal["all"] = Field("all", description="artifact names to test, or all")
    worst: int = Field(20, ge=1, le=10_000, description="worst-disagreeing inputs kept per artifact")

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else resolve_file(v, info, "shadow inputs")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else resolve_file(v, info, "shadow labels")
