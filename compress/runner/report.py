"""The run's report: built from the run state, written last."""

from __future__ import annotations

from typing import Any

from compress.core.fileio import config_hash
from compress.runner.folder import (
    write_reports,
)


def tool_versions() -> dict[str, str]:
    """Versions of the toolkit and its backends, without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edgepack", "torch", "onnx", "onnxruntime", "onnxscript", "torchao", "torch-pruning",
                "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class ReportingMixin:
    """Runner methods: the run's report: built from the run state, written last."""

    def build_report(self, status: str, error: str | None) -> Any:
        from compress.core.report_schema import AdvisoryReport, ArtifactReport, ModelFacts, Report, StepReport

        arts = []
        for a in self.state.artifacts:
            if a.format == "torch":
                continue
            metrics = self.state.metrics.get(a.name, {})
            arts.append(ArtifactReport(
                name=a.name, format=a.format, cached=a.name in self.state.cached,
                path=str(a.path.relative_to(self.run_dir)) if a.path and a.path.is_relative_to(self.run_dir) else (str(a.path) if a.path else None),
                size_bytes=a.size_bytes, zipped_bytes=a.metadata.get("zipped_bytes"), sha256=a.sha256,
                precision=a.precision, parent=a.parent, step=a.step, config_hash=a.config_hash,
                accuracy=metrics.get("accuracy"), metrics=metrics, parity=self.state.parity.get(a.name),
                params=self.counts_of(a).get("params"), macs=self.counts_of(a).get("macs"),
                targets=self.state.targets.get(a.name, []),
                status="degraded" if (g := self.state.gate.get(a.name)) is not None and not g.passed else "ok",
                fidelity={k: v.model_dump(mode="json") for k, v in (self.state.fidelity.get(a.name) or {}).items()
                          if k != "gate" and v is not None} or None,
                gate=g.model_dump(mode="json") if g is not None else None,
                metadata={k: v for k, v in a.metadata.items() if not k.startswith("_")},
            ))
        r = self.recipe
        return Report(
            tool={"name": "edgepack", **{k: v for k, v in tool_versions().items()}},
            recipe={"name": r.name, "path": str(self.source.path) if self.source.path else None,
                    "hash": config_hash(r.model_dump(mode="json"))},
            created=self.created, status=status, error=error, env=self.env,
            task=r.task.model_dump(mode="json"),
            data={"source": self.data.source, "train": len(self.data.train), "calibration": len(self.data.calib),
                  "eval": len(self.data.eval)} if self.data else {"source": None, "eval": len(self.eval_split)},
            baseline=ModelFacts(**self.state.baseline) if self.state.baseline else None,
            steps=[StepReport(**s) for s in self.state.steps],
            artifacts=arts,
            advisories=[AdvisoryReport(**a.as_dict()) for a in self.state.advisories],
        )

    def write_report(self, status: str, error: str | None) -> Any:
        """Write report.md, report.html and, last, report.json (see :func:`compress.runner.folder.write_reports`).

        Raises:
            RunFolderWriteError: A report file could not be written (the run has failed).
        """
        from compress.core.report_schema import AdvisoryReport

        report = self.build_report(status, error)
        extras = self.report_extras(report)
        for key, value in extras.items():
            setattr(report, key, value)
        if self._log is not None and self._log.error is not None:
            report.advisories.append(AdvisoryReport(code="log_incomplete", severity="warning",
                                                    message=f"log.txt is incomplete: {self._log.error}"))
        write_reports(self.run_dir, report, self.log)
        return report

    def report_extras(self, report: Any) -> dict[str, Any]:
        """Sections later modules add: the summary (the answer first), the cloud-vs-device trade-off."""
        from bench.summary import summary_section

        extras: dict[str, Any] = {"summary": summary_section(report)}
        shadow = self.shadow_section()
        if shadow is not None:
            extras["shadow"] = shadow
        if report.status in ("ok", "degraded") and self.recipe.tradeoff is not None:
            try:
                from bench.tradeoff import tradeoff_section
            except ImportError:
                return extras
            extras["tradeoff"] = tradeoff_section(report, self.recipe, self.run_dir)
        return extras
