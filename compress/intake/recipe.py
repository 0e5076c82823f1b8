"""The typed recipe: what a user writes in ``recipe.yaml``.

Every mapping forbids unknown keys, so a typo is an error, never a silent default.
Step kinds are written as single-key mappings (``- prune: {ratio: 0.5}``); each kind's config
class lives beside its step and is registered with it (:class:`Step` dispatches on the registry).
Paths are resolved relative to the recipe file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from compress.core.checks import (
    MAX_DIM,
    MAX_RANK,
    BatchSize,
    Bool,
    Count,
    Dim,
    Epochs,
    Seed,
    StrictModel,
    Threads,
    check_elements,
    resolve_file,
    resolve_ref,
)
from compress.intake.recipe_steps import Step, step_config, step_kind
from compress.intake.search_spec import SearchSpec
from compress.intake.recipe_sections import (
    BudgetConfig,
    CloudConfig,
    NetworkProfile,
    PackageConfig,
    ShadowConfig,
    TradeoffConfig,
)
from devices.names import parse_target, unknown_name
from devices.specs import AdbDeviceSpec, SshDeviceSpec

RECIPE_VERSION = 1



__all__ = ["AdbDeviceSpec", "BudgetConfig", "CloudConfig", "NetworkProfile", "PackageConfig", "ShadowConfig",
           "SshDeviceSpec", "Step", "StrictModel", "TradeoffConfig", "resolve_file", "resolve_ref", "step_config", "step_kind"]  # re-exported: callers import them from here


# --------------------------------------------------------------------------- model


InputDtype = Literal["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]


class InputSpec(StrictModel):
    """One model input.

    ``shape`` includes the batch axis (at ``batch_axis``) with the size used for examples;
    ``-1`` marks a dynamic dimension, resolved from the data (or ``dynamic``) before any work.
    ``batch_axis: null`` is an input fed as given to every call (a scalar, a recurrent state
    shared by the batch, a sample rate): it is never sliced or stacked.
    """

    name: str = "input"
    shape: list[Annotated[int, Field(ge=-1, le=MAX_DIM)]] = Field(..., max_length=MAX_RANK)
    dtype: InputDtype = "float32"
    batch_axis: Literal[0, 1] | None = Field(0, description="axis that indexes samples; null: fed as given")
    dynamic: dict[int, Dim] = Field(
        default_factory=dict, description="size of a -1 axis when no data resolves it, e.g. {2: 48}"
    )

    @model_validator(mode="after")
    def _axes(self) -> InputSpec:
        if 0 in self.shape:
            raise ValueError(f"input {self.name!r}: a dimension of size 0 (use -1 for a dynamic one)")
        if self.batch_axis is not None and self.batch_axis >= len(self.shape):
            raise ValueError(f"input {self.name!r}: batch_axis {self.batch_axis} but the shape has {len(self.shape)} axes")
        for axis in self.dynamic:
            if not 0 <= axis < len(self.shape):
                raise ValueError(f"input {self.name!r}: dynamic axis {axis} is outside the shape {self.shape}")
            if self.shape[axis] != -1:
                raise ValueError(f"input {self.name!r}: dynamic axis {axis} has a fixed size {self.shape[axis]} (write -1)")
        check_elements(self.resolved_shape(), f"input {self.name!r}")
        return self

    @property
    def dynamic_axes(self) -> list[int]:
        """Axes still unresolved (-1 and not in ``dynamic``), batch axis excluded."""
        return [i for i, d in enumerate(self.shape) if d == -1 and i != self.batch_axis and i not in self.dynamic]

    def resolved_shape(self, batch: int | None = None) -> list[int]:
        """The shape with ``dynamic`` sizes filled in and the batch axis set to ``batch`` (if given)."""
        shape = [self.dynamic.get(i, d) for i, d in enumerate(self.shape)]
        if self.batch_axis is not None:
            shape[self.batch_axis] = batch if batch is not None else (shape[self.batch_axis] if shape[self.batch_axis] > 0 else 1)
        return shape


class DetectionSpec(StrictModel):
    """Layout of a detector's raw output, e.g. ``[N, 4 + classes, anchors]`` (YOLOv8)."""

    layout: Literal["channels_first", "channels_last"] = Field(
        "channels_first", description="[N, 4+C, A] (channels_first) or [N, A, 4+C] (channels_last)"
    )
    box_format: Literal["xywh", "xyxy"] = "xywh"
    objectness: Bool = Field(False, description="a score column after the box (YOLOv5: 4 + 1 + classes)")
    score_threshold: float = Field(0.25, gt=0, lt=1)
    iou_threshold: float = Field(0.5, gt=0, le=1, description="IoU that matches a box to the reference's")


OutputTask = Literal["classification", "regression", "detection", "embedding"]


class OutputSpec(StrictModel):
    """One model output: what it is, so that it is scored, protected and trained for what it is."""

    name: str
    task: OutputTask | None = Field(None, description="default: inferred from task.kind and the output's shape")
    probabilities: Literal["auto"] | Bool = Field(
        "auto", description="rows already softmaxed (in [0, 1], summing to 1); auto: detected from the outputs"
    )
    weight: float = Field(1.0, ge=0, le=1e6, description="weight of this output's loss in distillation and fine-tuning")
    detection: DetectionSpec | None = None


class ModelSpec(StrictModel):
    """Where the model comes from. Exactly one of factory, exported, onnx, pickle."""

    factory: str | None = Field(None, description="file.py:function or package.module:function returning an nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
    weights: Path | None = Field(None, description="state_dict loaded with weights_only=True")
    exported: Path | None = Field(None, description="a torch.export .pt2 file")
    onnx: Path | None = Field(None, description="an ONNX file (torch steps are then unavailable)")
    pickle: Path | None = Field(None, description="a full-model pickle; needs trust_pickle: true")
    trust_pickle: Bool = Field(False, description="load a pickle (runs its code): true or false, nothing else")
    input_shape: list[Dim] | None = Field(
        None, max_length=MAX_RANK, description="shape of the single float input, batch first"
    )
    inputs: list[InputSpec] | None = Field(None, description="several or non-float inputs")
    outputs: list[OutputSpec] | None = Field(
        None, description="what each output is (default: every output, inferred); by position, named as you like"
    )
    timeout_s: float = Field(600.0, gt=0, le=86_400, description="time the factory (and its module's import) may take")

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else resolve_ref(v, info, "model factory")

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else resolve_file(v, info, "weights file")

    @field_validator("exported")
    @classmethod
    def _exported(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else resolve_file(v, info, "exported program")

    @field_validator("onnx")
    @classmethod
    def _onnx(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else resolve_file(v, info, "ONNX model")

    @field_validator("pickle")
    @classmethod
    def _pickle(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else resolve_file(v, info, "pickled model")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = [k for k in ("factory", "exported", "onnx", "pickle") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of factory, exported, onnx, pickle"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.weights is not None and self.factory is None:
            raise ValueError("weights can only be used with factory")
        if self.pickle is not None and not self.trust_pickle:
            raise ValueError(
                "loading a full-model pickle runs arbitrary code; save a state_dict and use "
                "factory + weights, or set trust_pickle: true if you trust the file"
            )
        if self.input_shape is not None and self.inputs is not None:
            raise ValueError("give input_shape or inputs, not both")
        if self.input_shape is None and self.inputs is None and self.onnx is None:
            raise ValueError("input_shape (or inputs) is required")
        if self.input_shape is not None:
            check_elements(self.input_shape, "input_shape")
        return self

    @property
    def source_kind(self) -> Literal["factory", "exported", "onnx", "pickle"]:
        for k in ("factory", "exported", "onnx", "pickle"):
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        raise AssertionError("validated model spec has a source")

    def input_specs(self) -> list[InputSpec] | None:
        if self.inputs is not None:
            return self.inputs
        if self.input_shape is not None:
            return [InputSpec(name="input", shape=self.input_shape)]
        return None


# --------------------------------------------------------------------------- task and data


class TaskSpec(StrictModel):
    """What the model does; decides the metrics."""

    kind: Literal["classification", "regression", "embedding", "detection"]
    labels: list[str] | None = None
    top_k: int = Field(5, ge=1, le=100_000)
    detection: DetectionSpec | None = Field(None, description="layout of the detection output (kind: detection)")


class NormalizeSpec(StrictModel):
    """Per-channel normalisation the app must apply before inference (for the bundle)."""

    mean: list[float]
    std: list[Annotated[float, Field(gt=0)]]
    scale: float = Field(1.0, gt=0, le=1e6, description="multiply raw pixels by this first, e.g. 1/255")


class DataSpec(StrictModel):
    """The data: built-in, a .npz with x/y arrays, or a Python function."""

    source: str = Field(..., description="builtin:digits | path/to/data.npz | file.py:function")
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    calibration_samples: Count = 128
    seed: Seed = 0
    image_size: int | None = Field(None, ge=2, le=16_384, description="resize square images to this side")
    normalize: NormalizeSpec | None = None
    max_eval: int | None = Field(None, ge=1, le=2**31, description="evaluate on at most this many samples")
    timeout_s: float = Field(600.0, gt=0, le=86_400, description="time the data function (and its import) may take")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str, info: ValidationInfo) -> str:
        if v.startswith("builtin:"):
            name = v.split(":", 1)[1]
            if name not in BUILTIN_DATASETS:
                raise ValueError(f"unknown built-in data set {name!r}; known: {', '.join(BUILTIN_DATASETS)}")
            return v
        if v.endswith(".npz"):
            return str(resolve_file(v, info, "data file"))
        if ":" in v:
            return resolve_ref(v, info, "data function")
        raise ValueError("data.source must be builtin:NAME, a .npz file, or file.py:function")


BUILTIN_DATASETS = ("digits",)


# --------------------------------------------------------------------------- steps

Ratio = Annotated[float, Field(ge=0, lt=1, description="fraction in [0, 1)")]


class FeaturePair(StrictModel):
    """Match an intermediate student layer to a teacher layer during distillation."""

    student: str
    teacher: str
    weight: float = Field(1.0, ge=0, le=1e6)


class TrainConfig(StrictModel):
    """Shared optimisation settings."""

    epochs: Epochs = 5
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: BatchSize = 64
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    weight_decay: float = Field(0.0, ge=0, le=10)


# --------------------------------------------------------------------------- export


class OnnxExportConfig(StrictModel):
    """The ONNX export (torch.onnx.export with dynamo)."""

    opset: int | None = Field(None, ge=13, le=30, description="ONNX opset (default: the exporter's)")
    dynamic_batch: Bool = True


TflitePrecision = Literal["fp32", "fp16", "dynamic_int8", "int8"]


class TfliteExportConfig(StrictModel):
    """The TFLite export (litert-torch; quantized models with ai-edge-quantizer)."""

    precisions: list[TflitePrecision] = Field(default_factory=lambda: ["fp32", "int8"])
    channels_last_io: Bool = Field(False, description="NHWC inputs/outputs instead of NCHW")
    calibration_samples: Count | None = None


def _nullable_options(schema: dict[str, Any]) -> None:
    """``- onnx:`` (no options, YAML null) means the defaults, as ``- onnx: {}`` does: the schema says so."""
    for name, option in schema["properties"].items():
        schema["properties"][name] = {"anyOf": [option, {"type": "null"}], "description": "its options; none: the defaults"}


class OnnxExport(StrictModel):
    """Export ONNX (fp32 of the final torch model, plus what the steps quantized)."""

    model_config = ConfigDict(json_schema_extra=_nullable_options)
    onnx: OnnxExportConfig = Field(default_factory=OnnxExportConfig)


class TfliteExport(StrictModel):
    """Export TFLite, in each of ``precisions``."""

    model_config = ConfigDict(json_schema_extra=_nullable_options)
    tflite: TfliteExportConfig = Field(default_factory=TfliteExportConfig)


EXPORT_KINDS = {"onnx": OnnxExport, "tflite": TfliteExport}


def _export_item(value: Any) -> Any:
    """The shorthands ``onnx`` and ``{onnx: null}`` as the mapping ``{onnx: {}}``."""
    if isinstance(value, str):
        return {value: {}}
    if isinstance(value, dict) and len(value) == 1:
        key, cfg = next(iter(value.items()))
        return {key: {} if cfg is None else cfg}
    return value


def _export_tag(value: Any) -> str | None:
    value = _export_item(value)
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    return None


def _export_shorthand(schema: dict[str, Any]) -> None:
    """The schema of ``export:`` also accepts an export by its bare name (``export: [onnx]``)."""
    schema["items"]["oneOf"].insert(0, {"type": "string", "enum": list(EXPORT_KINDS),
                                        "description": "an export with its default options"})


ExportItem = Annotated[
    Union[Annotated[OnnxExport, Tag("onnx")], Annotated[TfliteExport, Tag("tflite")]],
    Discriminator(
        _export_tag,
        custom_error_type="export_kind",
        custom_error_message="an export is 'onnx', 'tflite', or a single-key mapping of one with options",
    ),
]


# --------------------------------------------------------------------------- bench, parity




class BenchConfig(StrictModel):
    """Where and how each artifact is timed: targets, threads, runs, the devices' connections."""

    targets: list[str] = Field(default_factory=lambda: ["local"])
    threads: list[Threads] = Field(default_factory=lambda: [1])
    warmup: int = Field(20, ge=0, le=1_000_000, description="minimum warmup runs; warmup goes on until stable")
    runs: int = Field(200, ge=1, le=1_000_000, description="timed runs in each process")
    repeats: int = Field(3, ge=1, le=100, description="fresh processes per measured latency, interleaved across artifacts")
    max_repeats: int = Field(6, ge=1, le=100, description="more interleaved rounds, up to this many, while a measured "
                             "latency cannot detect a change of target_mde (never fewer than repeats)")
    target_mde: float = Field(0.10, gt=0, le=10, description="the minimum detectable effect extra rounds aim for "
                              "(0.10: a comparison can tell a 10% change from noise)")
    yardstick: Bool = Field(True, description="time the machine yardstick beside each artifact in the same process, "
                            "so compare can judge changes with the machine's state cancelled out")
    batch_sizes: list[BatchSize] = Field(default_factory=lambda: [1])
    fresh_process: Bool = True
    ssh: dict[str, SshDeviceSpec] = Field(default_factory=dict)
    adb: dict[str, AdbDeviceSpec] = Field(default_factory=dict)
    emulated_cpus: list[str] = Field(default_factory=lambda: ["cortex-a72"])

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        problem = next((p for p in map(unknown_name, v) if p), None)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _named_devices(self) -> BenchConfig:
        for t in self.targets:
            name = parse_target(t)
            if name.kind == "ssh" and name.arg not in self.ssh:
                raise ValueError(f"target {t!r} needs bench.ssh.{name.arg} with host and user")
        return self


class ParityConfig(StrictModel):
    """Tolerances of the float export parity check (torch vs ONNX / TFLite)."""

    atol: float = Field(1e-4, gt=0, le=1e6)
    min_agreement: float = Field(0.99, ge=0, le=1, description="share of eval inputs with the same prediction")
    fail: Bool = Field(True, description="a failed float parity check stops the run")


class GateTolerance(StrictModel):
    """What an artifact must keep of the model it came from (its parent) and of the baseline.

    Unset fields are not checked. Decisions are argmax (classification), the 0.5 / 0 threshold
    of a one-value output, or detections above the score threshold.
    """

    min_agreement: float | None = Field(None, ge=0, le=1, description="share of equal decisions, per output, vs the parent")
    min_sqnr_db: float | None = Field(None, ge=-1000, le=1000, description="signal-to-quantization-noise ratio, per output, vs the parent")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="cosine over the whole output tensor vs the parent")
    max_dead_fraction: float | None = Field(None, ge=0, le=1, description="share of output values stuck where the reference varies")
    max_metric_drop: float | None = Field(None, ge=0, description="task metric (e.g. accuracy) loss vs the baseline, absolute")
    min_detection_f1: float | None = Field(None, ge=0, le=1, description="detections matched to the parent's (IoU and class)")


def _tol(**kw: Any) -> Any:
    return Field(default_factory=lambda: GateTolerance(**kw))


class FidelityConfig(StrictModel):
    """Gates every artifact passes to be ``ok``; a failed gate makes it ``degraded``.

    Tolerances go by the artifact's precision (fp32, fp16, int8 and other integer types);
    ``artifacts`` overrides them by artifact name (e.g. ``onnx-static: {min_agreement: 0.97}``).
    ``compressed`` applies to models a torch step changed (distill, prune, QAT) against the baseline.
    """

    fp32: GateTolerance = _tol(min_agreement=0.99, min_sqnr_db=30.0, max_dead_fraction=0.0, max_metric_drop=0.05)
    fp16: GateTolerance = _tol(min_agreement=0.99, min_sqnr_db=25.0, max_dead_fraction=0.0, max_metric_drop=0.05,
                               min_detection_f1=0.9)
    int8: GateTolerance = _tol(min_agreement=0.99, min_sqnr_db=20.0, max_dead_fraction=0.0, max_metric_drop=0.05,
                               min_detection_f1=0.8)
    compressed: GateTolerance = _tol(max_dead_fraction=0.0, max_metric_drop=0.05)
    artifacts: dict[str, GateTolerance] = Field(default_factory=dict, description="per-artifact overrides, by name")

    def tolerance_for(self, name: str, precision: str) -> GateTolerance:
        """The tolerances of one artifact: its precision's, with the per-artifact override on top."""
        base = self.fp32 if precision == "fp32" else self.fp16 if precision == "fp16" else self.int8
        override = self.artifacts.get(name)
        if override is None:
            return base
        merged = base.model_dump()
        merged.update(override.model_dump(exclude_unset=True))
        return GateTolerance(**merged)


# --------------------------------------------------------------------------- recipe


class Recipe(StrictModel):
    """A whole recipe file."""

    version: Literal[1] = Field(..., description="recipe format version")
    name: str = Field(..., max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: Seed = 0
    model: ModelSpec
    task: TaskSpec
    data: DataSpec | None = None
    steps: list[Step] = Field(default_factory=list, description="what is done to the model, in order")
    export: list[ExportItem] = Field(default_factory=lambda: [OnnxExport()], json_schema_extra=_export_shorthand,
                                     description="formats the final model is exported to: onnx, tflite")
    parity: ParityConfig = Field(default_factory=ParityConfig)
    gate: Literal["fail", "warn"] = Field(
        "fail", description="an artifact that fails its fidelity gate: fail the run (exit 1) or only warn; it is degraded either way"
    )
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    tradeoff: TradeoffConfig | None = Field(default_factory=TradeoffConfig, description="cloud-vs-device section; null to skip")
    package: PackageConfig | None = None
    shadow: ShadowConfig | None = Field(None, description="shadow-test each artifact against the baseline export "
                                                          "at the end of the run; null: off")
    search: SearchSpec | None = Field(None, description="compress search: the space, objectives and hard limits")

    @field_validator("export", mode="before")
    @classmethod
    def _exports(cls, v: Any) -> Any:
        return [_export_item(x) for x in v] if isinstance(v, list) else v

    def export_kinds(self) -> list[str]:
        return [step_kind(e) for e in self.export]

    def export_config(self, kind: str) -> StrictModel | None:
        for e in self.export:
            if step_kind(e) == kind:
                return getattr(e, kind)
        return None
