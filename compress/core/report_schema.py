"""The report schema: latency statistics, fidelity, and the versioned run report.

``report.json`` is the contract other tools (``compress compare``, the bundle, CI gates)
read; it is validated by these models on write and on read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

How = Literal["measured", "estimated", "emulated"]


class LatencyStats(BaseModel):
    """Summary of per-run latencies in milliseconds.

    ``how`` says whether the figure was measured on the device, estimated from a
    profile, or (never a latency) emulated. A latency measured in several fresh processes
    carries ``repeats``, each process's median and how many runs each gave; ``ci95`` is then
    a hierarchical-bootstrap interval, and ``mde_rel`` the smallest relative change a
    comparison with an equally precise run could tell from noise. Reports written before
    repeated processes lack these fields: one process, MDE unknown.
    """

    p50: float
    p90: float | None = Field(description="None: the tool printed no p90 (a summary-only benchmark binary)")
    p99: float | None = Field(description="None: the tool printed no p99 (a summary-only benchmark binary)")
    p95: float | None = Field(None, description="when the tool printed its own p95 instead of p90/p99 "
                                                "(TFLite benchmark_model)")
    mean: float
    std: float
    min: float
    max: float
    ci95: tuple[float, float] = Field(description="bootstrap 95% confidence interval of the median "
                                                  "(hierarchical: processes, then runs, when repeats > 1)")
    runs: int
    threads: int
    batch: int = 1
    how: How = "measured"
    noisy: bool = False
    noise_reason: str | None = None
    repeats: int = Field(1, description="fresh processes the runs come from")
    process_medians: list[float] | None = Field(None, description="median of each process, in the order they ran")
    process_runs: list[int] | None = Field(None, description="timed runs of each process (their share of times_ms, in order)")
    between_spread: float | None = Field(None, description="SD of the log of the process medians (~ relative spread)")
    mde_rel: float | None = Field(None, description="minimum detectable relative change (95% two-sided, 80% power) "
                                                    "against an equally precise run; None: unknown (one process)")

    yardstick_ratio: float | None = Field(None, description="median over all blocks of the artifact's block median "
                                                            "over the machine yardstick's, timed beside it "
                                                            "(bench.yardstick); what compare judges when both runs have it")
    yardstick_ci95: tuple[float, float] | None = Field(None, description="hierarchical-bootstrap 95% CI of yardstick_ratio")
    yardstick_process_ratios: list[float] | None = Field(None, description="yardstick_ratio of each process")
    yardstick_mde: float | None = Field(None, description="minimum detectable relative change of yardstick_ratio "
                                                          "against an equally precise run; None: one process")


SQNR_CAP_DB = 200.0
"""SQNR of identical outputs (and the floor of an all-noise one): finite, so reports stay JSON."""


class OutputFidelity(BaseModel):
    """One output of an artifact against the same output of a reference model."""

    name: str
    index: int
    task: str
    probabilities: bool = Field(description="compared as probabilities (never softmaxed again)")
    weight: float = Field(1.0, description="0: reported, not gated")
    samples: int
    cosine: float = Field(description="over the whole tensor")
    cosine_per_sample_mean: float | None = Field(None, description="only when a sample has more than one value")
    cosine_per_sample_min: float | None = None
    sqnr_db: float = Field(description=f"10 log10(sum ref^2 / sum (ref - out)^2), within +-{SQNR_CAP_DB:.0f} dB")
    max_rel_error: float = Field(description="max |out - ref| / std of the reference tensor")
    mean_rel_error: float
    r2: float | None = Field(None, description="1 - SSE / (reference's variation around its per-position mean)")
    dead_fraction: float = Field(description="share of positions constant or all-zero where the reference is not")
    dead_positions: int = 0
    positions: int = Field(0, description="columns of [N, C]; channels of a detection output; values per sample otherwise")
    nonfinite: int = Field(0, description="NaN or inf values in the artifact's output")
    agreement: float | None = Field(None, description="share of equal decisions")
    top_k: int | None = None
    top_k_agreement: float | None = Field(None, description="reference's top-1 within the artifact's top-k")
    support: list[int] | None = Field(None, description="reference's decisions per class")
    predicted: list[int] | None = Field(None, description="artifact's decisions per class")
    precision: list[float | None] | None = Field(None, description="per class, against the reference's decisions")
    recall: list[float | None] | None = None
    prob_max_abs_diff: float | None = Field(None, description="of the probabilities (softmax/sigmoid of logits)")
    prob_total_variation: float | None = Field(None, description="mean over samples of half the L1 distance")
    reference_detections: int | None = None
    detections: int | None = None
    matched_detections: int | None = None
    detection_precision: float | None = None
    detection_recall: float | None = None
    detection_f1: float | None = Field(None, description="2 matched / (artifact's + reference's detections)")
    detection_mean_iou: float | None = None
    detection_score_correlation: float | None = None
    detection_count_ratio: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="the artifact's task metrics vs labels")
    reference_metrics: dict[str, Any] = Field(default_factory=dict, description="the reference's, same labels")


class Fidelity(BaseModel):
    """A whole artifact against one reference model."""

    reference: str
    outputs: list[OutputFidelity]

    def output(self, name: str) -> OutputFidelity | None:
        return next((o for o in self.outputs if o.name == name), None)


class GateResult(BaseModel):
    """Whether an artifact keeps what it must of its parent and of the baseline."""

    passed: bool
    reasons: list[str] = Field(default_factory=list, description="one per failed check")
    fixes: list[str] = Field(default_factory=list)
    checked: dict[str, Any] = Field(default_factory=dict, description="output -> measure -> value, limit, vs, passed")


REPORT_SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Parity(_Model):
    """How closely an artifact reproduces its reference model on eval inputs."""

    reference: str = Field(description="artifact the outputs are compared with")
    max_abs_diff: float
    mean_abs_diff: float
    agreement: float | None = Field(None, description="share of inputs with the same predicted class")
    cosine: float | None = None
    tolerance: float | None = None
    passed: bool | None = None
    samples: int


class TargetResult(_Model):
    """One artifact on one target, at one thread count and batch size."""

    target: str
    how: Literal["measured", "estimated", "emulated"]
    device: str = Field(description="what it ran on, in words")
    threads: int
    batch: int = 1
    latency_ms: LatencyStats | None = None
    times_ms: list[float] | None = Field(None, description="every timed run, in order")
    throughput_items_s: float | None = None
    load_ms: float | None = None
    memory_increase_mb: float | None = None
    peak_rss_mb: float | None = None
    runtime: str | None = None
    parity: Parity | None = None
    estimate_band_ms: tuple[float, float] | None = None
    error: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ArtifactReport(_Model):
    name: str
    format: str
    cached: bool = Field(False, description="made by a step or export whose result came from the step cache")
    path: str | None
    size_bytes: int | None
    zipped_bytes: int | None = None
    sha256: str | None = None
    precision: str = "fp32"
    parent: str | None = None
    step: str | None = None
    config_hash: str | None = None
    accuracy: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: Parity | None = None
    params: int | None = None
    macs: int | None = None
    targets: list[TargetResult] = Field(default_factory=list)
    status: Literal["ok", "degraded"] = Field("ok", description="degraded: failed its fidelity gate (see gate)")
    fidelity: dict[str, Any] | None = Field(None, description="per-output fidelity vs_parent and vs_baseline")
    gate: dict[str, Any] | None = Field(None, description="passed, reasons, fixes")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return self.status == "degraded"


class ModelFacts(_Model):
    params: int | None = None
    macs: int | None = None
    size_bytes: int | None = None
    accuracy: float | None = None


class StepReport(_Model):
    index: int
    kind: str
    name: str
    config: dict[str, Any]
    status: Literal["ok", "degraded", "failed", "interrupted"] = "ok"
    duration_s: float | None = None
    input: str | None = Field(None, description="name of the model the step received")
    output: str | None = Field(None, description="name of the model it made (torch models are named here only)")
    before: ModelFacts | None = None
    after: ModelFacts | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    fidelity: dict[str, Any] | None = Field(None, description="a torch step's model vs the baseline, per output")
    gate: dict[str, Any] | None = None
    cached: bool = Field(False, description="the result came from the step cache (the step did not run)")
    cache_key: str | None = Field(None, description="the step cache entry it was stored in or read from (first 16 hex)")


class AdvisoryReport(_Model):
    code: str
    message: str
    severity: str = "warning"
    artifact: str | None = None
    step: str | None = None


class Report(_Model):
    schema_version: int = REPORT_SCHEMA_VERSION
    tool: dict[str, str] = Field(default_factory=dict)
    recipe: dict[str, Any]
    created: str
    status: Literal["ok", "degraded", "failed", "interrupted"] = Field(
        "ok", description="degraded: every step ran, but an artifact failed its fidelity gate")
    error: str | None = None
    env: dict[str, Any] = Field(default_factory=dict)
    task: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, Any] | None = Field(None, description="the answer first: per target the artifact to ship "
                                                 "(fastest that passed its gates), its speed-up, size and accuracy "
                                                 "against the baseline, and every artifact slower than its parent "
                                                 "(bench/summary.py)")
    baseline: ModelFacts | None = None
    steps: list[StepReport] = Field(default_factory=list)
    artifacts: list[ArtifactReport] = Field(default_factory=list)
    advisories: list[AdvisoryReport] = Field(default_factory=list)
    tradeoff: dict[str, Any] | None = None
    bundle: dict[str, Any] | None = None
    shadow: dict[str, Any] | None = Field(None, description="the recipe's shadow section: per artifact, the shadow "
                                                 "test against the baseline export (compress/runner/shadowing.py)")

    def artifact(self, name: str) -> ArtifactReport | None:
        return next((a for a in self.artifacts if a.name == name), None)


def load_report(path: Path) -> Report:
    """Read a ``report.json`` (or a run folder holding one)."""
    from compress.core.errors import InputFileError

    p = path / "report.json" if path.is_dir() else path
    if not p.is_file():
        raise InputFileError(f"{path}: no report.json there")
    try:
        return Report.model_validate_json(p.read_text(encoding="utf-8"))
    except Exception as e:
        raise InputFileError(f"{p}: not an edgepack report ({type(e).__name__}: {str(e).splitlines()[0]})") from e
