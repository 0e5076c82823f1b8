"""The shared types: artifacts and their lineage.

Inside one torch stage a live ``nn.Module`` may pass from step to step (``module``);
at every format boundary the artifact is a file on disk (``path``), because remote
targets, the cache and the bundle need files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from compress.core.fileio import sha256_file

ArtifactFormat = Literal["torch", "pt2", "onnx", "tflite"]


@dataclass
class Artifact:
    """A model produced by a run.

    Args:
        name: Unique name within the run, e.g. ``onnx-fp32``, ``tflite-int8``.
        format: torch (live module), pt2, onnx or tflite.
        path: The file on disk; None only for a live torch module not yet saved.
        module: The live ``nn.Module`` inside a torch stage.
        parent: Name of the artifact this one was made from.
        step: The step or export that made it, e.g. ``02-prune`` or ``export:onnx``.
        config_hash: Hash of the config of that step.
        precision: fp32, fp16, int8 or mixed.
        metadata: Layout, quantization parameters and other facts the bundle needs.
        load_module: Loads ``module`` on first use, when the model is known but not yet in
            memory (the baseline or a step's model answered from the step cache: a run whose
            steps are all cached never imports torch). Called at most once.
        content_hash: The model's hash (:func:`compress.runner.stepkey.model_hash`) while
            ``module`` is not loaded; cleared when it is (from then on the module is hashed).
    """

    name: str
    format: ArtifactFormat
    path: Path | None = None
    module: Any = None
    parent: str | None = None
    step: str | None = None
    config_hash: str | None = None
    precision: str = "fp32"
    metadata: dict[str, Any] = field(default_factory=dict)
    load_module: Callable[[], Any] | None = field(default=None, repr=False, compare=False)
    content_hash: str | None = field(default=None, repr=False, compare=False)

    @property
    def holds_module(self) -> bool:
        """Whether the artifact has a torch module, loaded or not (never loads it)."""
        return self.__dict__.get("_module") is not None or self.load_module is not None

    @property
    def size_bytes(self) -> int | None:
        return self.path.stat().st_size if self.path is not None and self.path.exists() else None

    @property
    def sha256(self) -> str | None:
        return sha256_file(self.path) if self.path is not None and self.path.is_file() else None

    def derive(self, **changes: Any) -> Artifact:
        """A child artifact: same metadata, this one as parent.

        Keys starting with ``_`` are the run's private state about this very artifact (its
        parity, benchmark results, its cached ONNX export) and are not inherited.
        """
        base = {
            "name": self.name,
            "format": self.format,
            "path": None,
            "module": None,
            "parent": self.name,
            "precision": self.precision,
            "metadata": {k: v for k, v in self.metadata.items() if not k.startswith("_")},
        }
        base.update(changes)
        return Artifact(**base)


def _get_module(self: Artifact) -> Any:
    module = self.__dict__.get("_module")
    if module is None and self.load_module is not None:
        load, self.load_module = self.load_module, None
        module = load()
        self.__dict__["_module"] = module
        self.content_hash = None  # the module may change from now on: it is hashed itself
    return module


def _set_module(self: Artifact, module: Any) -> None:
    self.__dict__["_module"] = module
    if module is not None:
        self.load_module = None
        self.content_hash = None


# ``module`` is a dataclass field (an __init__ argument, in fields()) read through a property,
# so that a known model is loaded only when something uses it.
Artifact.module = property(_get_module, _set_module)  # type: ignore[assignment]


@dataclass(frozen=True)
class BenchSpec:
    """How to time one artifact."""

    threads: int = 1
    warmup: int = 20
    max_warmup: int = 500
    runs: int = 200
    batch: int = 1
    cpus: tuple[int, ...] | None = None
    yardstick: bool = True  # time the machine yardstick beside the artifact (bench.yardstick)


Severity = Literal["info", "warning", "error"]


@dataclass
class Advisory:
    """A note in the report that a choice will not pay off, and what to do instead."""

    code: str
    message: str
    severity: Severity = "warning"
    artifact: str | None = None
    step: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}
