"""One trial: its recipe run through the Runner (with the step cache), and what it measured.

A trial is an ordinary run folder (``compress compare`` works on any two). Its outcome is
read back from its ``report.json``: the final deployable artifact's latency on the search
target (the same harness, statistics and noise flags as any run), its accuracy and the
loss against the baseline, its size; a fidelity-gate failure or a missed hard limit makes
the trial infeasible, with the reason.
"""

from __future__ import annotations

import math
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.core.errors import EdgepackError
from compress.runner.run import Runner
from compress.search.gate import BenchGate

UPPER_BOUNDS = ("latency_ms", "accuracy_loss", "size_mb")
"""Constraint metrics that are upper limits; ``accuracy`` is a lower one."""


@dataclass
class TrialJob:
    """Everything a worker needs to run one trial (picklable: it crosses processes and Ray)."""

    number: int
    params: dict[str, Any]
    data: dict[str, Any]  # the trial's raw recipe data
    recipe_path: str  # the base recipe: relative paths resolve against its folder
    run_dir: str
    gate_dir: str | None = None  # the search folder's locks: steps shared, benchmarks exclusive
    gate_host: str = field(default_factory=socket.gethostname)
    benchmark: bool = True
    use_cache: bool = True


class TrialRunner(Runner):
    """A Runner whose pipeline yields to benchmarks: work holds the gate shared, timing holds it alone."""

    def __init__(self, *args: Any, gate: BenchGate | None = None, benchmark: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.do_benchmark = benchmark
        self._shared: Any = None

    def _pipeline(self, baseline: Any, baseline_outputs: Any = None) -> None:
        self._shared = self.gate.shared() if self.gate is not None else None
        try:
            super()._pipeline(baseline, baseline_outputs)
        finally:
            if self._shared is not None:
                self._shared.release()
                self._shared = None

    def benchmark_all(self) -> None:
        if not self.do_benchmark:
            self.log("benchmarks left to the search driver (latency is measured on the target only)")
            return
        if self.gate is None:
            super().benchmark_all()
            return
        if self._shared is not None:  # never wait for the room while holding a share of it
            self._shared.release()
            self._shared = None
        with self.gate.exclusive():
            super().benchmark_all()


def run_trial_job(job: TrialJob) -> dict[str, Any]:
    """Run one trial's recipe into its folder; return its outcome (a JSON-able dict)."""
    from compress.search.space import trial_source

    start = time.monotonic()
    run_dir = Path(job.run_dir)
    outcome: dict[str, Any] = {"number": job.number, "params": job.params, "run_dir": str(run_dir)}
    gate = BenchGate(Path(job.gate_dir)) if job.gate_dir and job.gate_host == socket.gethostname() else None
    try:
        source = trial_source(Path(job.recipe_path), job.data)
        runner = TrialRunner(source, run_dir, None, use_cache=job.use_cache, gate=gate, benchmark=job.benchmark)
        report = runner.run()
    except EdgepackError as e:
        outcome.update(status="failed", reason=_one_line(e.user_message()))
        report = _read_report(run_dir)
    except Exception as e:  # a bug: the trial fails, the search goes on (traceback in the trial's log)
        _log_traceback(run_dir)
        outcome.update(status="failed", reason=f"internal error: {type(e).__name__}: {_one_line(str(e))}")
        report = _read_report(run_dir)
    outcome["duration_s"] = round(time.monotonic() - start, 2)
    if report is not None:
        outcome["steps"] = [{"name": s.name, "cached": s.cached} for s in report.steps]
    if outcome.get("status") == "failed":
        return outcome
    outcome.update(read_outcome(report, job.data["bench"]["targets"][0], measured=job.benchmark))
    return outcome


def _read_report(run_dir: Path) -> Any:
    from compress.core.report_schema import load_report

    try:
        return load_report(run_dir)
    except EdgepackError:
        return None


def _log_traceback(run_dir: Path) -> None:
    import traceback

    try:
        with open(run_dir / "log.txt", "a", encoding="utf-8") as f:
            f.write(traceback.format_exc())
    except OSError:
        pass


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines)[:500]


def final_artifact(report: Any) -> Any:
    """The deployable artifact the recipe's steps end in.

    The artifact the last step made (an ONNX quantize step's), else the ONNX export of the
    last torch model (a QAT model's int8 export, a pruned model's fp32 one), else the
    baseline's export. None when the run made no ONNX or TFLite file.
    """
    files = [a for a in report.artifacts if a.format in ("onnx", "tflite")]
    if not files:
        return None
    onnx = [a for a in files if a.format == "onnx"] or files
    if report.steps:
        last = report.steps[-1]
        made = [a for a in onnx if a.step == last.name]
        if made:
            return made[-1]
        exported = [a for a in onnx if a.parent == last.output]
        if exported:
            return exported[0]
    exported = [a for a in onnx if a.parent in ("baseline", None)]
    return exported[0] if exported else onnx[-1]


def wilson_ci(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion ``p`` out of ``n`` samples."""
    if n <= 0:
        return (p, p)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def read_outcome(report: Any, target: str, measured: bool = True) -> dict[str, Any]:
    """The metrics of a trial's final artifact, and whether its fidelity gate passed."""
    art = final_artifact(report)
    if art is None:
        return {"status": "failed", "reason": "the run made no ONNX or TFLite artifact to measure"}
    out: dict[str, Any] = {"artifact": art.name, "artifact_sha256": art.sha256, "precision": art.precision}
    metrics: dict[str, Any] = {}
    if art.size_bytes is not None:
        metrics["size_mb"] = {"value": art.size_bytes / 1e6}
    n_eval = int((report.data or {}).get("eval") or 0)
    if art.accuracy is not None:
        metrics["accuracy"] = {"value": art.accuracy, "ci95": list(wilson_ci(art.accuracy, n_eval))}
        base = report.baseline.accuracy if report.baseline is not None else None
        if base is not None:
            metrics["accuracy_loss"] = {"value": base - art.accuracy, "baseline": base}
    result = next((t for t in art.targets if t.target == target and t.latency_ms is not None), None)
    if result is not None:
        lat = result.latency_ms
        metrics["latency_ms"] = {"value": lat.p50, "ci95": list(lat.ci95) if lat.ci95 else None, "how": lat.how,
                                 "noisy": lat.noisy, "mde_rel": lat.mde_rel, "yardstick_ratio": lat.yardstick_ratio}
    elif measured:
        errors = [t.error for t in art.targets if t.error]
        return {**out, "metrics": metrics, "status": "failed",
                "reason": f"no latency of {art.name} on {target}" + (f": {errors[0]}" if errors else "")}
    out["metrics"] = metrics
    if art.status == "degraded":
        reasons = (art.gate or {}).get("reasons") or ["failed its fidelity gate"]
        more = f" (+{len(reasons) - 2} more in its report)" if len(reasons) > 2 else ""
        out.update(status="infeasible", reason=f"{art.name} fidelity gate: " + "; ".join(reasons[:2]) + more,
                   gate_reasons=reasons)
    else:
        out["status"] = "ok"
    return out


def violations(outcome: dict[str, Any], constraints: dict[str, float]) -> dict[str, float]:
    """How far each hard limit is missed (> 0) or met (<= 0), in the metric's unit."""
    metrics = outcome.get("metrics") or {}
    out: dict[str, float] = {}
    for name, limit in constraints.items():
        value = (metrics.get(name) or {}).get("value")
        if value is None:
            out[name] = math.inf
        elif name in UPPER_BOUNDS:
            out[name] = value - limit
        else:
            out[name] = limit - value
    return out


def judge(outcome: dict[str, Any], constraints: dict[str, float]) -> dict[str, Any]:
    """Mark a measured outcome feasible or infeasible (gate first, then the hard limits)."""
    if outcome.get("status") == "failed":
        return outcome
    missed = violations(outcome, constraints)
    outcome["violations"] = {k: (None if math.isinf(v) else v) for k, v in missed.items()}
    over = [k for k, v in missed.items() if v > 0]
    if outcome.get("status") == "infeasible":
        return outcome
    if over:
        m = outcome.get("metrics") or {}
        outcome["status"] = "infeasible"
        outcome["reason"] = "; ".join(
            f"{k} {_fmt((m.get(k) or {}).get('value'))} {'<' if k == 'accuracy' else '>'} limit {constraints[k]:g}"
            for k in over)
    else:
        outcome["status"] = "feasible"
    return outcome


def _fmt(v: Any) -> str:
    return "missing" if v is None else f"{v:.4g}"


def remove_scratch(run_dir: Path) -> None:
    """Remove a training-only run folder once the measured run has taken its steps from the cache."""
    shutil.rmtree(run_dir, ignore_errors=True)
