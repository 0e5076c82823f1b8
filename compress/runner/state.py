"""RunState, and where each artifact came from (lineage) and what it counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compress.core.types import Advisory, Artifact


@dataclass
class RunState:
    artifacts: list[Artifact] = field(default_factory=list)
    advisories: list[Advisory] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    reference_outputs: np.ndarray | None = None
    # the baseline artifact and its outputs on the eval split (the baseline is never changed)
    baseline_outputs: tuple[Artifact, list[np.ndarray]] | None = None
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # params / MACs / size / accuracy by artifact name: torch models (which the report does not
    # list as artifacts) and the counts their exports inherit
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    # torch models by name (the baseline and every step's result): parents of exports, by lineage
    torch_models: dict[str, Artifact] = field(default_factory=dict)
    # names of the artifacts a step or export answered from the step cache
    cached: set[str] = field(default_factory=set)
    # what the run found about each artifact, by artifact name (never in Artifact.metadata):
    parity: dict[str, Any] = field(default_factory=dict)  # bench.parity.Parity vs the model it came from
    targets: dict[str, list[Any]] = field(default_factory=dict)  # TargetResults, per bench target
    gate: dict[str, Any] = field(default_factory=dict)  # GateResult of a file artifact
    fidelity: dict[str, dict[str, Any]] = field(default_factory=dict)  # vs_parent, vs_baseline, gate
    # the run's ONNX export of each torch model, by the torch model's name (made once)
    onnx_exports: dict[str, Artifact] = field(default_factory=dict)
    # the recipe's shadow section: each tested artifact's result (compress.runner.shadowing)
    shadow: dict[str, Any] = field(default_factory=dict)


class LineageMixin:
    """Runner methods: where each artifact came from (lineage) and what it counts."""

    def _unique_name(self, name: str) -> str:
        # torch models (in facts) share the namespace: exports and parity name them as parents
        names = {a.name for a in self.state.artifacts} | set(self.state.facts)
        if name not in names:
            return name
        i = 2
        while f"{name}-{i}" in names:
            i += 1
        return f"{name}-{i}"

    def add_artifact(self, art: Artifact) -> Artifact:
        art.name = self._unique_name(art.name)
        self.state.artifacts.append(art)
        return art

    def artifact_named(self, name: str | None) -> Artifact | None:
        """The file artifact of this run with that name."""
        return next((a for a in self.state.artifacts if a.name == name), None) if name else None

    def parent_of(self, art: Artifact) -> Artifact | None:
        """The model an artifact was made from, by lineage (a file or a torch model of this run)."""
        if not art.parent:
            return None
        return self.artifact_named(art.parent) or self.state.torch_models.get(art.parent)

    def float_ancestor(self, art: Artifact) -> Artifact | None:
        """The nearest float torch model a quantized torch model was made from (None for a float model)."""
        if art.precision == "fp32":
            return None
        seen: set[str] = set()
        parent = self.state.torch_models.get(art.parent or "")
        while parent is not None and parent.name not in seen:
            if parent.precision == "fp32":
                return parent
            seen.add(parent.name)
            parent = self.state.torch_models.get(parent.parent or "")
        return None

    def timed_parent(self, art: Artifact) -> str | None:
        """What an artifact's speed-up is measured against: its parent when that is a file; for a
        file made from a torch model, the fp32 file of the same format made from that model or from
        the float model it was trained from (tflite-int8 vs tflite-fp32, a QAT ONNX vs its float parent)."""
        if self.artifact_named(art.parent) is not None:
            return art.parent
        source = self.state.torch_models.get(art.parent or "")
        if source is None:
            return None
        sources = {source.name} | ({f.name} if (f := self.float_ancestor(source)) is not None else set())
        return next((a.name for a in self.state.artifacts if a is not art and a.format == art.format
                     and a.precision == "fp32" and a.parent in sources and a.path is not None), None)

    def counts_of(self, art: Artifact) -> dict[str, Any]:
        """Params and MACs of an artifact: a file has those of the torch model it was made from
        (quantization changes the precision of each multiply-accumulate, not their number)."""
        seen: set[str] = set()
        name: str | None = art.name
        while name and name not in seen:
            seen.add(name)
            facts = self.state.facts.get(name)
            if facts and (facts.get("params") is not None or facts.get("macs") is not None):
                return {"params": facts.get("params"), "macs": facts.get("macs")}
            parent = self.artifact_named(name)
            name = parent.parent if parent is not None else (art.parent if name == art.name else None)
        return {}

    def degraded(self) -> list[str]:
        """Names of the artifacts (and torch step models) that failed their gates."""
        names = [a.name for a in self.state.artifacts if (g := self.state.gate.get(a.name)) is not None and not g.passed]
        names += [s["output"] for s in self.state.steps if s.get("status") == "degraded" and s.get("output")]
        return names
