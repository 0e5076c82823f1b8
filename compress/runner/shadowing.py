"""The recipe's ``shadow:`` section: at the end of a run, each artifact beside the baseline export of its format.

The comparison is the one ``compress shadow`` makes (:mod:`compress.runner.shadow`), on the
eval split (outputs the run computed already) or on the logged inputs the section names. Results
go to ``shadow/<artifact>/`` (``shadow.json``, ``shadow.md``, ``worst.npz``) and to the report's
``shadow`` key; a failed verdict fails the artifact's gate, so the artifact and the run are
``degraded`` (exit 1 unless ``gate: warn``). Latency is not measured again: the run's own
benchmark timed every artifact interleaved, and its local p50s are quoted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.core.types import Advisory, Artifact


def family_baseline(art: Artifact, files: list[Artifact]) -> Artifact | None:
    """The fp32 export an artifact is shadow-tested against: same format, else the fp32 ONNX; None for itself."""
    fp32 = [a for a in files if a.precision == "fp32"]
    same = next((a for a in fp32 if a.format == art.format), None)
    base = same or next((a for a in fp32 if a.format == "onnx"), None)
    return None if base is None or base is art else base


def _output_names(runner: Any, art: Artifact, count: int) -> list[str]:
    names = runner.output_names(art) if art.format == "onnx" else [o.get("name") for o in art.metadata.get("outputs") or []]
    return names if names and len(names) == count and all(names) else [f"output_{i}" for i in range(count)]


def _local_p50(runner: Any, name: str) -> float | None:
    for t in runner.state.targets.get(name, []):
        if t.target == "local" and t.latency_ms is not None and not t.error:
            return float(t.latency_ms.p50)
    return None


class ShadowMixin:
    """Runner methods: the recipe's ``shadow:`` section."""

    def shadow_all(self) -> None:
        """Shadow-test every chosen artifact against its family's fp32 export (see the module docstring)."""
        cfg = self.recipe.shadow
        if cfg is None or self.gatekeeper is None:
            return
        files = [a for a in self.state.artifacts if a.format in ("onnx", "tflite") and a.path is not None]
        names = [a.name for a in files]
        wanted = names if cfg.artifacts == "all" else list(cfg.artifacts)
        for name in wanted:
            if name not in names:
                self.state.advisories.append(Advisory(
                    "shadow_unknown_artifact", f"shadow.artifacts names {name!r}, which this run did not make "
                    f"(it made: {', '.join(names)})", "warning"))
        # the section's logged inputs; each model's outputs on them are computed when needed
        logged = {"path": cfg.inputs, "outputs": {}, "labels": None, "xs": None} if cfg.inputs is not None else None
        pairs = [(family_baseline(a, files), a) for a in files if a.name in wanted]
        pairs = [(b, a) for b, a in pairs if b is not None]
        if not pairs:
            self.log("shadow: no artifact to test (each is the fp32 export of its format)")
        for base, art in pairs:
            self._shadow_one(cfg, base, art, logged)

    def _shadow_outputs(self, art: Artifact, logged: dict[str, Any] | None, cfg: Any) -> list[np.ndarray]:
        if logged is None:
            return self.outputs_of(art)
        if art.name not in logged["outputs"]:
            from bench.runtime import predict
            from compress.runner.shadow import Side, class_labels, open_side, read_labels, side_inputs

            side = Side("baseline", art.name, art.path, art.format, f"artifact {art.name}", art.sha256 or "",
                        art.metadata)
            session = open_side(side)
            xs, y = side_inputs(side, session, logged["path"], fallback=logged["xs"])
            outs = predict(session, xs)
            if art.metadata.get("channels_last_outputs"):
                from export.tflite import from_model_layout

                outs = from_model_layout(art.metadata, outs)
            logged["outputs"][art.name] = outs
            if logged["xs"] is None:
                from bench.agent import num_samples

                logged["xs"], logged["input_names"] = xs, [i["name"] for i in session.inputs]
                n = num_samples(xs)
                logged["labels"] = (read_labels(str(cfg.labels), n, "shadow.labels") if cfg.labels is not None
                                    else class_labels(y, f"shadow.inputs {cfg.inputs}: y") if y is not None
                                    and self.recipe.task.kind == "classification" else None)
        return logged["outputs"][art.name]

    def _shadow_one(self, cfg: Any, base: Artifact, art: Artifact, logged: dict[str, Any] | None) -> None:
        from bench.shadow import Thresholds
        from compress.core.errors import EdgepackError, StepError
        from compress.runner.shadow import Side, shadow_result, worst_arrays, write_results

        thresholds = Thresholds(max_flip_rate=cfg.max_flip_rate, max_accuracy_drop=cfg.max_accuracy_drop,
                                max_ece_increase=cfg.max_ece_increase, max_confidence_shift=cfg.max_confidence_shift)
        try:
            b_outs, c_outs = self._shadow_outputs(base, logged, cfg), self._shadow_outputs(art, logged, cfg)
            labels = logged["labels"] if logged is not None else self.eval_split.y
            sides = [Side(role, a.name, a.path, a.format, f"artifact {a.name} of this run", a.sha256 or "")
                     for role, a in (("baseline", base), ("candidate", art))]
            names = (_output_names(self, base, len(b_outs)), _output_names(self, art, len(c_outs)))
            result, worst, c_outs = shadow_result(sides[0], sides[1], b_outs, c_outs, names, self.recipe.task.kind,
                                                  None if labels is None else np.asarray(labels), thresholds,
                                                  cfg.worst, specs=self.gatekeeper.specs)
        except EdgepackError as e:
            raise StepError("shadow", f"{art.name} vs {base.name}: {e}") from e
        xs = logged["xs"] if logged is not None else self.model_inputs(base)
        input_names = logged["input_names"] if logged is not None else [f"eval{i}" for i in range(len(xs))]
        n = len(b_outs[0]) if b_outs else 0
        result["inputs"] = {"file": str(cfg.inputs) if logged is not None else "the recipe's eval split",
                            "samples": n, "labels": ("yes" if labels is not None else None)}
        result["latency"] = {"how": "measured", "target": "local", "from": "this run's benchmark (interleaved)",
                             "baseline_p50_ms": _local_p50(self, base.name), "candidate_p50_ms": _local_p50(self, art.name)}
        folder = self.run_dir / "shadow" / art.name
        write_results(folder, result, worst_arrays(xs, input_names, b_outs, c_outs, worst,
                                                   None if labels is None else np.asarray(labels)))
        result["worst"]["file"] = str((folder / "worst.npz").relative_to(self.run_dir))
        self.state.shadow[art.name] = result
        v = result["verdict"]
        self.log(f"  shadow {art.name} vs {base.name}: " + ("pass" if v["passed"] else "FAIL: " + "; ".join(v["reasons"])))
        if not v["passed"]:
            self._shadow_failed(art, base, v["reasons"])

    def _shadow_failed(self, art: Artifact, base: Artifact, reasons: list[str]) -> None:
        """A failed shadow verdict fails the artifact's gate (degraded, like a fidelity gate)."""
        from compress.core.report_schema import GateResult

        shown = [f"shadow vs {base.name}: {r}" for r in reasons]
        fix = f"see shadow/{art.name}/shadow.md and worst.npz for the inputs whose decisions changed"
        g = self.state.gate.get(art.name)
        g = (GateResult(passed=False, reasons=shown, fixes=[fix]) if g is None
             else g.model_copy(update={"passed": False, "reasons": [*g.reasons, *shown], "fixes": [*g.fixes, fix]}))
        self.state.gate[art.name] = g
        if art.name in self.state.fidelity:
            self.state.fidelity[art.name]["gate"] = g
        self.state.advisories.append(Advisory("shadow_failed", f"{art.name} is degraded: " + "; ".join(shown)
                                              + f" Fix: {fix}", "error", art.name))

    def shadow_section(self) -> dict[str, Any] | None:
        """The report's ``shadow`` key: results per artifact and their Markdown."""
        if not self.state.shadow:
            return None
        from bench.shadow_report import render_shadow_markdown

        md = ["## Shadow tests", ""] + [render_shadow_markdown(r, heading="###") for r in self.state.shadow.values()]
        return {"artifacts": self.state.shadow, "markdown": "\n".join(md)}
