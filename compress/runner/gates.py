"""Fidelity gates: every artifact, on every output, against its parent and the baseline.

An artifact that fails its gate is ``degraded``: it stays in the run folder and the report
with the reasons and the fixes, is never recommended or ringed as a Pareto point, is refused
by ``compress package`` without ``--force``, and makes the run ``degraded`` (exit 1 unless the
recipe says ``gate: warn``). Tolerances go by precision (``fidelity.int8`` ...), with
per-artifact overrides (``fidelity.artifacts.NAME``); models a torch step changed are held to
``fidelity.compressed`` against the baseline.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from compress.core.types import Advisory, Artifact
from compress.intake.recipe import GateTolerance, Recipe

# A model's outputs on the eval split, or what computes them when a measure is not cached.
Outputs = Union[list[np.ndarray], Callable[[], list[np.ndarray]]]


def _value(outputs: Outputs) -> list[np.ndarray]:
    return outputs() if callable(outputs) else outputs


@dataclass
class Gatekeeper:
    """Measures fidelity and applies the recipe's gates.

    Args:
        recipe: The validated recipe (tolerances, task).
        specs: What each output is (``bench.outputs.resolve_outputs``).
        baseline_name: The baseline's artifact name.
        baseline_outputs: The baseline's outputs on the eval split.
        labels: Labels by output index, on the eval split.
        log: Where a line per gate goes.
        checks: Where measures are cached (:class:`compress.runner.checkcache.CheckCache`), or None.
        baseline_id: The baseline's model hash (its measures are cached by it), or None.
    """

    recipe: Recipe
    specs: list[Any]
    baseline_name: str
    baseline_outputs: list[np.ndarray]
    labels: dict[int, np.ndarray]
    log: Callable[[str], None] = lambda _m: None
    checks: Any = None
    baseline_id: str | None = None
    baseline_fidelity: Any = None
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from bench.fidelity import measure_fidelity

        # the baseline against itself: its own task metrics per output, what drops are measured from
        self.baseline_fidelity = measure_fidelity(self.baseline_outputs, self.baseline_outputs, self.specs,
                                                  self.baseline_name, labels=self.labels, top_k=self.recipe.task.top_k)

    def measure(self, outputs: Outputs, reference: Outputs, reference_name: str,
                ids: tuple[str | None, str | None] = (None, None)) -> Any:
        """Fidelity of ``outputs`` against ``reference``; from the cache when both models' hashes
        (``ids``) are known and were measured so before (then neither model runs)."""
        from bench.fidelity import measure_fidelity
        from compress.core.report_schema import Fidelity

        settings = {"specs": [dataclasses.asdict(s) for s in self.specs], "top_k": self.recipe.task.top_k}
        if self.checks is not None:
            hit = self.checks.get("fidelity", ids, settings, Fidelity, reference_name)
            if hit is not None:
                return hit
        fid = measure_fidelity(_value(reference), _value(outputs), self.specs, reference_name, labels=self.labels,
                               top_k=self.recipe.task.top_k)
        if self.checks is not None:
            self.checks.put("fidelity", ids, settings, fid)
        return fid

    def gate(self, name: str, precision: str, outputs: Outputs, parent: tuple[str, Outputs] | None,
             tolerance: GateTolerance | None = None, ids: tuple[str | None, str | None] = (None, None)) -> dict[str, Any]:
        """Gate one artifact (or a torch model a step made).

        Args:
            name: The artifact's name.
            precision: fp32, fp16, int8, ... (chooses the tolerances).
            outputs: Its outputs on the eval split (or what computes them).
            parent: (name, outputs) of the model it was made from; None when it was made from
                the baseline by a step that changes the function (then only the baseline gate applies).
            tolerance: Overrides the precision's tolerances (``fidelity.compressed`` for torch steps).
            ids: The model hashes of the artifact and its parent, which cache the measures.

        Returns:
            ``{"vs_parent": Fidelity | None, "vs_baseline": Fidelity, "gate": GateResult}``.
        """
        from bench.fidelity import evaluate_gate, summary_line

        tol = tolerance or self.recipe.fidelity.tolerance_for(name, precision)
        vs_parent = None
        if parent is not None:
            vs_parent = self.measure(outputs, parent[1], parent[0], ids)
        vs_baseline = (vs_parent if parent is not None and parent[0] == self.baseline_name
                       else self.measure(outputs, self.baseline_outputs, self.baseline_name, (ids[0], self.baseline_id)))
        result = evaluate_gate(vs_parent, vs_baseline, tol, precision, baseline=self.baseline_fidelity)
        inherited = self.results.get(parent[0]) if parent is not None else None
        if not result.passed and inherited is not None and not inherited["gate"].passed:
            # the loss comes from the model it was made from, not from this conversion
            result.fixes = [f"{parent[0]} failed its own gate already; fix that step: "
                            + "; ".join(inherited["gate"].fixes)]
        shown = vs_parent if vs_parent is not None else vs_baseline
        self.log(f"  fidelity {name} {summary_line(shown)}"
                 + ("" if result.passed else " DEGRADED"))
        for reason in result.reasons:
            self.log(f"    gate: {reason}")
        out = {"vs_parent": vs_parent, "vs_baseline": vs_baseline, "gate": result}
        self.results[name] = out
        return out


class GatingMixin:
    """Runner methods: fidelity gates: every artifact against its parent and the baseline."""

    def start_gates(self, baseline: Artifact, baseline_outputs: list[np.ndarray]) -> None:
        """Resolve what each output is and set up the gates (every later artifact is gated)."""
        from bench.outputs import resolve_outputs

        m, t = self.recipe.model, self.recipe.task
        try:
            specs = resolve_outputs(baseline_outputs, m.outputs, t.kind, t.detection, self.output_names(baseline))
        except ValueError as e:
            raise self.source.error([self.source.problem(("model", "outputs"), str(e))]) from e
        labels: dict[int, np.ndarray] = {}
        split = self.eval_split
        targets = getattr(split, "targets", None) or {}
        for spec in specs:
            if spec.name in targets:
                labels[spec.index] = targets[spec.name]
        primary = next((s.index for s in specs if s.task == t.kind), 0)
        if split.y is not None and primary not in labels:
            labels[primary] = split.y
        self.gatekeeper = Gatekeeper(self.recipe, specs, baseline.name, baseline_outputs, labels, self.log,
                                     checks=self.checks, baseline_id=self.model_hash(baseline))
        shown = ", ".join(f"{s.name} ({s.task}{', probabilities' if s.probabilities else ''})" for s in specs)
        self.log(f"outputs: {shown}")

    @staticmethod
    def output_names(art: Artifact) -> list[str] | None:
        """The model's own output names (ONNX), when it has them."""
        if art.format != "onnx" or art.path is None:
            return None
        try:
            import onnx

            return [o.name for o in onnx.load(str(art.path), load_external_data=False).graph.output]
        except Exception:  # noqa: BLE001  (names are a nicety; the model loaded already)
            return None

    def gate_torch_step(self, record: dict[str, Any], result: Artifact) -> None:
        """A torch step's model against the baseline, with ``fidelity.compressed``."""
        if self.gatekeeper is None:
            return
        g = self.gatekeeper.gate(result.name, "fp32", lambda: self.outputs_of(result.module), None,
                                 tolerance=self.recipe.fidelity.artifacts.get(result.name) or self.recipe.fidelity.compressed,
                                 ids=(self.model_hash(result), None))
        record["fidelity"] = g["vs_baseline"].model_dump(mode="json")
        record["gate"] = g["gate"].model_dump(mode="json")
        if not g["gate"].passed:
            record["status"] = "degraded"
            self.state.advisories.append(Advisory(
                "gate_failed", f"{result.name} (step {record['name']}): " + "; ".join(g["gate"].reasons)
                + (" Fix: " + "; ".join(g["gate"].fixes) if g["gate"].fixes else ""), "error", step=record["name"]))

    def gate_artifacts(self) -> None:
        """Gate every file artifact against its parent and the baseline."""
        if self.gatekeeper is None:
            return
        for art in self.state.artifacts:
            if art.format not in ("onnx", "tflite") or art.step == "input" or art.name in self.state.gate:
                continue
            parent = self.parent_of(art)
            try:
                ref = (parent.name, functools.partial(self.outputs_of, parent)) if parent is not None else None
                g = self.gatekeeper.gate(art.name, art.precision, functools.partial(self.outputs_of, art), ref,
                                         ids=(self.model_hash(art), self.model_hash(parent) if parent is not None else None))
            except ValueError as e:
                from compress.core.report_schema import GateResult

                g = {"vs_parent": None, "vs_baseline": None,
                     "gate": GateResult(passed=False, reasons=[f"outputs cannot be compared: {e}"], fixes=[])}
                self.log(f"  fidelity {art.name}: {e}")
            self.state.fidelity[art.name] = g
            self.state.gate[art.name] = g["gate"]
            if not g["gate"].passed:
                self.state.advisories.append(Advisory(
                    "gate_failed", f"{art.name} is degraded: " + "; ".join(g["gate"].reasons)
                    + (" Fix: " + "; ".join(g["gate"].fixes) if g["gate"].fixes else ""), "error", art.name))
