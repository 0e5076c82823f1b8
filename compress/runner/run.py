"""Run a recipe: intake, steps, exports, evaluation, benchmarks, report.

The runner owns the run folder. Every step gets ``steps/NN-kind/``, every export
``exports/NAME/``; files are written atomically, and a failed or interrupted run still
writes its report with what finished. The folder is locked for the run, what a killed run
left is cleaned first, and the report is written last (see :mod:`compress.runner.folder`).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from compress.core.fileio import atomic_write_text, config_hash, zipped_size
from compress.core.types import Artifact
from compress.core.step import StepContext, StepResult
from compress.core.types import Advisory
from compress.intake.data import Dataset, Split, load_dataset, synthetic_inputs
from compress.core.errors import EdgepackError, RecipeProblem, StepError, TargetsFailed
from compress.intake.recipe import Recipe, step_config, step_kind
from compress.intake.recipe_io import RecipeSource
from compress.steps.registry import EXPORTS, STEPS, load
from compress.runner.folder import (
    RunFolderLock,
    RunFolderWriteError,
    RunLog,
    remove_old_reports,
    remove_stale_files,
    write_error_of,
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


def environment() -> dict[str, Any]:
    from bench.agent import device_facts

    from compress.core.env import detect_cpu, host_cpu

    env = device_facts()
    env["versions"] = tool_versions()
    # what chose the int8 defaults (the target CPU: $EDGEPACK_CPUINFO when set) and what measured
    env["cpu_features"] = {"target": detect_cpu().as_dict(), "host": host_cpu().as_dict()}
    return env


def is_arm_target(target: str) -> bool:
    """Whether a bench target runs on ARM: emulated aarch64, an Android phone, or a device
    profile (shipped or the user's own) whose ``arch`` is ARM."""
    if target.startswith(("emulated:", "adb")):
        return True
    if target.startswith("estimate:"):
        from devices.estimate import load_profile

        try:
            arch = load_profile(target.split(":", 1)[1]).arch
        except Exception:  # noqa: BLE001  (an unknown profile is the target's own error, reported when it runs)
            return False
        return arch.lower() in ("aarch64", "arm64") or arch.lower().startswith("arm")
    return False


@dataclass
class RunState:
    artifacts: list[Artifact] = field(default_factory=list)
    advisories: list[Advisory] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    reference_outputs: np.ndarray | None = None
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


class Runner:
    """Runs one recipe into one run folder."""

    def __init__(self, source: RecipeSource, out: Path | None = None, console: Any = None,
                 use_cache: bool = True) -> None:
        self.source = source
        self.use_cache = use_cache
        self.cache: Any = None  # compress.runner.runcache.RunCache, once the data is loaded
        self._dirs_used: set[Path] = set()  # step and export folders this run has written
        self.recipe: Recipe = source.recipe
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.run_dir = out or Path("runs") / self.recipe.name / f"{stamp}-{secrets.token_hex(3)}"
        self.console = console
        self.state = RunState()
        self.data: Dataset | None = None
        self.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._log: RunLog | None = None
        self._steps_done = False  # torch models are final (their outputs may be cached) once True
        self.gatekeeper: Any = None  # compress.runner.gates.Gatekeeper, once the baseline's outputs are known

    # ------------------------------------------------------------------ logging

    def log(self, msg: str) -> None:
        from rich.errors import MarkupError

        from devices.untrusted import clean_text

        msg = clean_text(msg, 20_000)  # a board's text reaches the log: no terminal escapes
        if self.console is not None:
            try:
                self.console.print(msg, highlight=False)
            except MarkupError:  # brackets in a message (a board's, a path) that are not our markup
                self.console.print(msg, highlight=False, markup=False)
        if self._log is not None:
            self._log.write(f"{dt.datetime.now().strftime('%H:%M:%S')} {msg}\n")

    # ------------------------------------------------------------------ evaluation

    @property
    def eval_split(self) -> Split:
        if self.data is not None:
            return self.data.eval
        from compress.intake.models import input_specs_of

        return synthetic_inputs(input_specs_of(self.recipe.model) or [], 64, self.recipe.seed)

    def _outputs_key(self, art: Artifact) -> str | None:
        """Cache key of an artifact's eval outputs, or None when they may still change.

        A file artifact of this run never changes once written (the key still carries its
        size and time, to be sure); a torch model is final only once every step has run.
        """
        if not any(a is art for a in self.state.artifacts) and not (self._steps_done and art.format == "torch"):
            return None
        if art.format == "torch":
            return f"torch:{art.name}:{id(art.module)}"
        if art.path is None or not art.path.is_file():
            return None
        st = art.path.stat()
        return f"file:{art.name}:{art.path}:{st.st_size}:{st.st_mtime_ns}"

    def outputs_of(self, thing: Any) -> list[np.ndarray]:
        """Outputs on the eval split of a torch module or a file artifact (computed once per artifact)."""
        if isinstance(thing, Artifact):
            key = self._outputs_key(thing)
            if key is not None and key in self.state.outputs:
                return self.state.outputs[key]
            if thing.format == "torch":
                outs = self.outputs_of(thing.module)
            else:
                from bench.runtime import open_model, predict

                outs = predict(open_model(thing.path), self.model_inputs(thing))
                if thing.metadata.get("channels_last_outputs"):
                    from export.tflite import from_model_layout

                    outs = from_model_layout(thing.metadata, outs)
            if key is not None:
                self.state.outputs[key] = outs
            return outs
        from compress.intake.models import set_mode, torch_predict

        was_training = getattr(thing, "training", False)
        if was_training:
            set_mode(thing, False)
        try:
            return torch_predict(thing, self.eval_split.x)
        finally:
            if was_training:
                set_mode(thing, True)

    def model_inputs(self, art: Artifact) -> list[np.ndarray]:
        """The eval inputs in the layout the artifact takes (NHWC for a channels-last TFLite model)."""
        if art.metadata.get("channels_last_inputs"):
            from export.tflite import to_model_layout

            return to_model_layout(art.metadata, self.eval_split.x)
        return self.eval_split.x

    def evaluate(self, thing: Any, outputs: np.ndarray | None = None) -> dict[str, Any]:
        """Task metrics of a module or artifact on the eval split (``outputs``: its primary output, if known)."""
        from bench.accuracy import task_metrics

        y = self.eval_split.y
        ncls = len(self.recipe.task.labels) if self.recipe.task.labels else None
        primary = self.gatekeeper.specs[0] if self.gatekeeper is not None and self.gatekeeper.specs else None
        probabilities = bool(primary and primary.probabilities)
        # Cached per (model hash, eval data): the metrics of a model the cache answered need
        # not be computed again (the outputs the gates compare are computed where needed).
        key = self._eval_key(thing, ncls, probabilities) if outputs is None else None
        if key is not None and (hit := self.cache.eval_get(*key)) is not None:
            return hit
        out = self.outputs_of(thing)[0] if outputs is None else outputs
        metrics = task_metrics(self.recipe.task.kind, out, y, self.state.reference_outputs, ncls,
                               probabilities=probabilities)
        if key is not None:
            self.cache.eval_put(*key, metrics)
        return metrics

    def _eval_key(self, thing: Any, ncls: int | None, probabilities: bool) -> tuple[str, str] | None:
        """(model hash, metric spec) of an evaluation the cache may answer, or None."""
        if self.cache is None or not self.cache.enabled or self.state.reference_outputs is None:
            return None
        import hashlib

        try:
            model_hash = self.cache.artifact_hash(thing)
        except (TypeError, OSError, RuntimeError, AttributeError):
            return None
        ref = np.ascontiguousarray(self.state.reference_outputs)
        spec = (f"{self.recipe.task.kind}|classes={ncls}|probabilities={probabilities}|"
                f"reference={hashlib.sha256(ref.tobytes()).hexdigest()[:16]}|"
                f"layout={thing.metadata.get('channels_last_inputs') if isinstance(thing, Artifact) else None}")
        return model_hash, spec

    def torch_facts(self, module: Any, outputs: np.ndarray | None = None) -> dict[str, Any]:
        from compress.intake.models import count_macs, count_params, torch_size_bytes

        specs = self.recipe.model.input_specs() or []
        facts: dict[str, Any] = {"params": count_params(module), "macs": count_macs(module, specs)}
        try:
            facts["size_bytes"] = torch_size_bytes(module)
        except Exception:
            facts["size_bytes"] = None
        facts["accuracy"] = self.evaluate(module, outputs).get("accuracy")
        return facts

    # ------------------------------------------------------------------ stages

    def _context(self, step_dir: Path, step_name: str, reference: Any) -> StepContext:
        if step_dir.is_dir() and step_dir not in self._dirs_used:
            # what a killed or earlier run left in this step's folder (a resumed run, a rerun
            # into the same folder): the step starts clean, and the cache stores only its files
            shutil.rmtree(step_dir)
        self._dirs_used.add(step_dir)
        step_dir.mkdir(parents=True, exist_ok=True)
        ctx = StepContext(
            recipe=self.recipe, run_dir=self.run_dir, step_dir=step_dir, step_name=step_name, data=self.data,
            reference=reference, log=self.log, evaluate=self.evaluate, target_arch=self.target_arch(),
        )
        return ctx

    def target_arch(self) -> str:
        """x86 unless every benchmark target is ARM (then int8 defaults follow ARM kernels)."""
        targets = self.recipe.bench.targets
        arm = [t for t in targets if is_arm_target(t)]
        return "arm" if arm and len(arm) == len([t for t in targets if t != "local"]) and "local" not in targets else "x86"

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

    def preflight(self, baseline: Artifact) -> None:
        """Step checks against the loaded model, before any work starts."""
        from compress.intake.models import intake_problems

        problems: list[RecipeProblem] = [self.source.problem(loc, msg)
                                         for loc, msg in intake_problems(baseline, self.recipe, self.data)]
        for i, step in enumerate(self.recipe.steps):
            kind = step_kind(step)
            entry = STEPS[kind]
            if entry.check is None:
                continue
            try:
                check = load(entry.check)
            except (ImportError, AttributeError):
                continue
            for sub, msg in check(step_config(step), baseline, self.recipe, self.data) or []:
                loc = ("steps", i, kind) + tuple(sub)
                problems.append(self.source.problem(loc, msg))
        if problems:
            raise self.source.error(problems)

    def run_step(self, index: int, step: Any, current: Artifact, reference: Any) -> Artifact:
        kind = step_kind(step)
        cfg = step_config(step)
        entry = STEPS[kind]
        name = f"{index + 1:02d}-{kind}"
        record: dict[str, Any] = {"index": index + 1, "kind": kind, "name": name,
                                  "config": cfg.model_dump(mode="json"), "status": "ok"}
        self.state.steps.append(record)
        if current.format not in entry.accepts:
            raise StepError(name, f"{kind} accepts {', '.join(entry.accepts)} models, got {current.format}")
        self.log(f"[bold]step {name}[/bold]")
        record["input"] = current.name
        if current.format == "torch":
            # the previous step's "after" (the module has not changed since)
            record["before"] = dict(self.state.facts.get(current.name) or self.torch_facts(current.module))
        else:
            record["before"] = self.file_facts(current)
        ctx = self._context(self.run_dir / "steps" / name, name, reference)
        key = self.cache.key(kind, record["config"], current, reference) if self.cache is not None else None
        hit = self.cache.lookup(key, self.run_dir, ctx.step_dir) if key is not None else None
        t0 = time.perf_counter()
        try:
            if hit is not None:
                step_result = self._from_cache(record, hit)
            else:
                self._seed(index + 1)
                step_result = load(entry.run)(current, cfg, ctx)
        except KeyboardInterrupt:
            record["status"] = "interrupted"
            raise
        except EdgepackError as e:
            record["status"] = "failed"
            record["error"] = str(e)
            self.state.advisories.extend(getattr(e, "advisories", ()))
            raise
        except Exception as e:
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}"
            self._log_traceback()
            raise StepError(name, f"{type(e).__name__}: {e}") from e
        finally:
            record["duration_s"] = round(time.perf_counter() - t0, 3)
        result = step_result.artifact
        result.step = result.step or name
        result.config_hash = result.config_hash or config_hash(cfg)
        if hit is None and key is not None:
            if self.cache.store(key, self.run_dir, ctx.step_dir, step_result, record["duration_s"]):
                record["cache_key"] = key.digest[:16]
                self.log(f"  stored in the step cache, entry {key.digest[:12]}")
        self.state.advisories.extend(step_result.advisories)
        record["details"] = step_result.details
        for extra in step_result.extras:
            self.add_artifact(extra)
        if result.format == "torch":
            if result is not current:
                result.name = self._unique_name(result.name)  # a second prune's model is not the first's
            record["after"] = self.torch_facts(result.module)
            self.state.facts[result.name] = dict(record["after"])
            self.state.torch_models[result.name] = result
            self.gate_torch_step(record, result)
        else:
            self.add_artifact(result)
            # A step that restarts from another file than its input (a second quantize step starts
            # again from the float ONNX model) is compared with that file, not with its input.
            parent = self.artifact_named(result.parent)
            if parent is not None and parent is not current and parent.format != "torch":
                record["before"] = self.file_facts(parent)
            record["after"] = self.file_facts(result)
        record["output"] = result.name
        return result

    def _from_cache(self, record: dict[str, Any], hit: Any) -> StepResult:
        """A step's result from the step cache, as if the step had just returned it."""
        record["cached"] = True
        record["cache_key"] = hit.digest[:16]
        self.state.cached.update(a.name for a in hit.result.artifacts)
        took = f" (it took {hit.duration_s:.1f} s)" if hit.duration_s is not None else ""
        self.log(f"  cached: {record['name']} from the step cache, entry {hit.digest[:12]}{took}")
        return hit.result

    def artifact_named(self, name: str | None) -> Artifact | None:
        """The file artifact of this run with that name."""
        return next((a for a in self.state.artifacts if a.name == name), None) if name else None

    # ------------------------------------------------------------------ fidelity gates

    def start_gates(self, baseline: Artifact, baseline_outputs: list[np.ndarray]) -> None:
        """Resolve what each output is and set up the gates (every later artifact is gated)."""
        from bench.outputs import resolve_outputs
        from compress.runner.gates import Gatekeeper

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
        self.gatekeeper = Gatekeeper(self.recipe, specs, baseline.name, baseline_outputs, labels, self.log)
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
        g = self.gatekeeper.gate(result.name, "fp32", self.outputs_of(result.module), None,
                                 tolerance=self.recipe.fidelity.artifacts.get(result.name) or self.recipe.fidelity.compressed)
        record["fidelity"] = g["vs_baseline"].model_dump(mode="json")
        record["gate"] = g["gate"].model_dump(mode="json")
        if not g["gate"].passed:
            record["status"] = "degraded"
            self.state.advisories.append(Advisory(
                "gate_failed", f"{result.name} (step {record['name']}): " + "; ".join(g["gate"].reasons)
                + (" Fix: " + "; ".join(g["gate"].fixes) if g["gate"].fixes else ""), "error", step=record["name"]))

    def parent_of(self, art: Artifact) -> Artifact | None:
        """The model an artifact was made from, by lineage (a file or a torch model of this run)."""
        if not art.parent:
            return None
        return self.artifact_named(art.parent) or self.state.torch_models.get(art.parent)

    def gate_artifacts(self) -> None:
        """Gate every file artifact against its parent and the baseline."""
        if self.gatekeeper is None:
            return
        for art in self.state.artifacts:
            if art.format not in ("onnx", "tflite") or art.step == "input" or "_gate" in art.metadata:
                continue
            parent = self.parent_of(art)
            try:
                outs = self.outputs_of(art)
                ref = (parent.name, self.outputs_of(parent)) if parent is not None else None
                g = self.gatekeeper.gate(art.name, art.precision, outs, ref)
            except ValueError as e:
                from compress.core.report_schema import GateResult

                g = {"vs_parent": None, "vs_baseline": None,
                     "gate": GateResult(passed=False, reasons=[f"outputs cannot be compared: {e}"], fixes=[])}
                self.log(f"  fidelity {art.name}: {e}")
            art.metadata["_fidelity"] = g
            art.metadata["_gate"] = g["gate"]
            if not g["gate"].passed:
                self.state.advisories.append(Advisory(
                    "gate_failed", f"{art.name} is degraded: " + "; ".join(g["gate"].reasons)
                    + (" Fix: " + "; ".join(g["gate"].fixes) if g["gate"].fixes else ""), "error", art.name))

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

    def degraded(self) -> list[str]:
        """Names of the artifacts (and torch step models) that failed their gates."""
        names = [a.name for a in self.state.artifacts if (g := a.metadata.get("_gate")) is not None and not g.passed]
        names += [s["output"] for s in self.state.steps if s.get("status") == "degraded" and s.get("output")]
        return names

    def file_facts(self, art: Artifact) -> dict[str, Any]:
        """Size and accuracy of a file artifact, with the params / MACs of the model it came from."""
        counts = self.counts_of(art)
        facts: dict[str, Any] = {"params": counts.get("params"), "macs": counts.get("macs"), "size_bytes": art.size_bytes}
        try:
            facts["accuracy"] = self.metrics_of(art).get("accuracy")
        except Exception as e:
            self.log(f"cannot evaluate {art.name}: {e}")
        return facts

    def metrics_of(self, art: Artifact) -> dict[str, Any]:
        """Task metrics of a file artifact, computed once for a registered one."""
        registered = any(a is art for a in self.state.artifacts)
        if registered and art.name in self.state.metrics:
            return self.state.metrics[art.name]
        metrics = self.evaluate(art)
        if registered:
            self.state.metrics[art.name] = metrics
        return metrics

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

    def _log_traceback(self) -> None:
        """Keep the traceback of an unexpected error in log.txt (never on the console)."""
        if self._log is not None:
            self._log.write(traceback.format_exc())

    def ensure_onnx(self, torch_art: Artifact) -> Artifact:
        """The ONNX export of a torch artifact, made once, parity-checked, registered."""
        cached = torch_art.metadata.get("_onnx_export")
        if cached is not None:
            return cached
        from compress.intake.recipe import OnnxExportConfig

        cfg = self.recipe.export_config("onnx") or OnnxExportConfig()
        art = self.run_export("onnx", cfg, torch_art)[0]
        torch_art.metadata["_onnx_export"] = art
        return art

    def run_export(self, kind: str, cfg: Any, source: Artifact) -> list[Artifact]:
        """Run one export; check each result's parity against the torch model."""
        step_name = f"export:{kind}"
        ctx = self._context(self.run_dir / "exports" / f"{kind}-{source.precision}", step_name, source.module)
        self.log(f"[bold]export {kind}[/bold] ({source.precision})")
        key = (self.cache.key(step_name, cfg.model_dump(mode="json"), source, None)
               if self.cache is not None and source.format == "torch" else None)
        hit = self.cache.lookup(key, self.run_dir, ctx.step_dir) if key is not None else None
        t0 = time.perf_counter()
        try:
            if hit is not None:
                self.log(f"  cached: export {kind} from the step cache, entry {hit.digest[:12]}")
                result = hit.result
                self.state.cached.update(a.name for a in result.artifacts)
            else:
                result = load(EXPORTS[kind])(source, cfg, ctx)
                if key is not None:
                    self.cache.store(key, self.run_dir, ctx.step_dir, result, time.perf_counter() - t0)
        except EdgepackError as e:
            self.state.advisories.extend(getattr(e, "advisories", ()))
            raise
        except Exception as e:
            self._log_traceback()
            raise StepError(step_name, f"{type(e).__name__}: {e}") from e
        self.state.advisories.extend(result.advisories)
        for art in result.artifacts:
            art.metadata.setdefault("export_seconds", round(time.perf_counter() - t0, 3))
            self.add_artifact(art)
            self.check_parity(art, source)
        return list(result.artifacts)

    def check_parity(self, art: Artifact, source: Artifact) -> None:
        """Compare an exported artifact with the model it came from, on eval inputs."""
        from bench.parity import compare_outputs

        ref = self.outputs_of(source)[0]
        out = self.outputs_of(art)[0]
        p = self.recipe.parity
        is_float = art.precision in ("fp32",) and source.precision == "fp32"
        parity = compare_outputs(ref, out, source.name, self.recipe.task.kind,
                                 tolerance=p.atol if is_float else None, min_agreement=p.min_agreement if is_float else None)
        art.metadata["_parity"] = parity
        verdict = "" if parity.passed is None else (" ok" if parity.passed else " FAILED")
        self.log(f"  parity {art.name} vs {source.name}: max abs diff {parity.max_abs_diff:.2e}"
                 + (f", agreement {parity.agreement:.4f}" if parity.agreement is not None else "") + verdict)
        if parity.passed is False:
            msg = (f"{art.name} differs from {source.name}: max abs diff {parity.max_abs_diff:.3g} > atol {p.atol:g}"
                   + (f" or agreement {parity.agreement:.4f} < {p.min_agreement}" if parity.agreement is not None else ""))
            if p.fail:
                raise StepError(art.step or "export", msg + " (relax parity.atol or set parity.fail: false to accept)")
            self.state.advisories.append(Advisory("parity_failed", msg, "warning", art.name))

    def benchmark_all(self) -> None:
        """Time every ONNX/TFLite artifact on every target: ``bench.repeats`` fresh processes per
        latency, artifacts interleaved (A B C A B C ...), speed-ups over the parent with their CI."""
        from compress.runner.benchmarks import benchmark_interleaved, results_and_errors
        from devices.targets import make_target
        from compress.core.types import BenchSpec

        b = self.recipe.bench
        files = [a for a in self.state.artifacts if a.format in ("onnx", "tflite") and a.path is not None]
        errors: list[str] = []
        targets, settings = [], {}
        for tname in b.targets:
            try:
                target = make_target(tname, b)
            except EdgepackError as e:
                errors.append(str(e))
                continue
            batches = list(b.batch_sizes)
            if tname == "local" and self.recipe.tradeoff is not None and self.recipe.tradeoff.cloud.batch not in batches:
                batches.append(self.recipe.tradeoff.cloud.batch)  # the cloud side's server time
            targets.append((tname, target))
            settings[tname] = [BenchSpec(threads=threads, warmup=b.warmup, runs=b.runs, batch=batch, yardstick=b.yardstick)
                               for threads in b.threads for batch in batches]
        results = benchmark_interleaved(files, targets, settings, b.repeats, self.model_inputs, self.log,
                                        parent_of=self.timed_parent, max_repeats=b.max_repeats, target_mde=b.target_mde)
        by_artifact, failures = results_and_errors(files, results)
        for art in files:
            art.metadata.setdefault("_targets", []).extend(by_artifact.get(art.name, []))
        errors += failures
        if errors:
            raise TargetsFailed(errors)

    # ------------------------------------------------------------------ report

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
                accuracy=metrics.get("accuracy"), metrics=metrics, parity=a.metadata.get("_parity"),
                params=self.counts_of(a).get("params"), macs=self.counts_of(a).get("macs"),
                targets=a.metadata.get("_targets", []),
                status="degraded" if (g := a.metadata.get("_gate")) is not None and not g.passed else "ok",
                fidelity={k: v.model_dump(mode="json") for k, v in (a.metadata.get("_fidelity") or {}).items()
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

    def _fail(self, exc: BaseException, status: str = "failed") -> BaseException:
        """Write the report of a run that failed with ``exc``; return the error to raise.

        A full disk or read-only folder under any error is reported as that; an error that
        is not ours is an internal error (its traceback goes to log.txt). When even the
        failure report cannot be written, an older ``report.json`` of this run (one that said
        ok before packaging) is removed, so no report claims more than what exists.
        """
        err: BaseException | None = write_error_of(exc) or (exc if isinstance(exc, EdgepackError) else None)
        if status == "interrupted":
            message = "interrupted by the user (Ctrl-C)"
        elif err is None:
            self._log_traceback()
            message = f"internal error: {type(exc).__name__}: {exc}"
        else:
            message = str(err)
        try:
            self.write_report(status, message)
        except RunFolderWriteError as w:
            self.log(f"the report of the failed run was not written: {w}")
            try:
                (self.run_dir / "report.json").unlink(missing_ok=True)
            except OSError:
                pass
        return err if err is not None else exc

    def report_extras(self, report: Any) -> dict[str, Any]:
        """Sections later modules add (cloud-vs-device trade-off)."""
        extras: dict[str, Any] = {}
        if report.status in ("ok", "degraded") and self.recipe.tradeoff is not None:
            try:
                from bench.tradeoff import tradeoff_section
            except ImportError:
                return extras
            extras["tradeoff"] = tradeoff_section(report, self.recipe, self.run_dir)
        return extras

    # ------------------------------------------------------------------ main

    def run(self) -> Any:
        """Run the recipe; return the report. Raises after writing the report on failure.

        Raises:
            RunFolderBusy: Another run holds the run folder (nothing was touched).
            RunFolderWriteError: The disk is full or the folder read-only (the run failed).
        """
        lock = RunFolderLock(self.run_dir)
        lock.acquire()
        try:
            return self._run_locked()
        except OSError as e:  # a write outside the pipeline: the log, recipe.resolved.yaml, env.json
            err = write_error_of(e)
            if err is None:
                raise
            raise err from e
        finally:
            lock.release()

    def _run_locked(self) -> Any:
        from compress.intake.models import load_model

        removed = remove_stale_files(self.run_dir)
        remove_old_reports(self.run_dir)
        self.env = environment()
        self._log = RunLog(self.run_dir / "log.txt")
        try:
            if removed:
                self.log(f"removed {len(removed)} file(s) an interrupted run left: "
                         + ", ".join(str(p.relative_to(self.run_dir)) for p in removed[:5]))
            atomic_write_text(self.run_dir / "recipe.resolved.yaml",
                              yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False))
            atomic_write_text(self.run_dir / "env.json", json.dumps(self.env, indent=2))
            self.log(f"run folder: {self.run_dir}")
            if self.recipe.data is not None:
                from compress.intake.models import input_specs_of

                self.data = load_dataset(self.recipe.data, input_specs_of(self.recipe.model))
                self.log(f"data {self.data.source}: {len(self.data.train)} train, {len(self.data.calib)} calibration, "
                         f"{len(self.data.eval)} eval")
            from compress.runner.runcache import RunCache

            self.cache = RunCache(self.recipe, self.source.path.parent if self.source.path else None, self.data,
                                  self.target_arch(), enabled=self.use_cache, log=self.log)
            if not self.use_cache:
                self.log("step cache off (--no-cache): every step runs")
            baseline = load_model(self.recipe.model)
            try:
                self.preflight(baseline)
            except (KeyboardInterrupt, Exception):
                raise
            except BaseException as e:  # the model's forward exited (SystemExit & co.) on the intake check
                from compress.core.errors import UserCodeError

                raise UserCodeError(f"the model's code raised {type(e).__name__} ({e}) on the intake check: "
                                    "user code must return or raise an exception, not exit") from None
            self.check_targets()
            self._seed()
            status, error = "ok", None
            try:
                self._pipeline(baseline)
            except KeyboardInterrupt as e:
                self._fail(e, "interrupted")
                raise
            except Exception as e:  # a bug still keeps the report of what finished
                err = self._fail(e)
                if err is e:
                    raise
                raise err from e
            except BaseException as e:  # the model's own code (forward) raised SystemExit & co. mid-run
                from compress.core.errors import UserCodeError

                user = UserCodeError(f"the model's code raised {type(e).__name__} ({e}) during the run: "
                                     "user code must return or raise an exception, not exit")
                raise self._fail(user) from None
            degraded = self.degraded()
            if degraded:
                status = "degraded"
                error = (f"{len(degraded)} artifact(s) failed their fidelity gate: {', '.join(degraded)}"
                         + (" (gate: warn)" if self.recipe.gate == "warn" else ""))
            report = self.write_report(status, error)
            try:
                self.package_if_asked(report)
            except Exception as e:  # the report must not say ok when the run did not finish
                err = self._fail(e)
                if err is e:
                    raise
                raise err from e
            return report
        finally:
            self._log.close()

    def check_targets(self) -> None:
        """Reach every device target before any work: an unreachable board, a phone that is
        not there or an emulation root never set up fails now, not after the training."""
        from devices.targets import make_target

        errors = []
        for name in self.recipe.bench.targets:
            if name == "local" or name.startswith("estimate:"):
                continue  # nothing to reach; profiles are checked with the recipe
            self.log(f"checking target {name}")
            try:
                make_target(name, self.recipe.bench).describe()
            except EdgepackError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise TargetsFailed([str(e) for e in errors])

    def _seed(self, step: int = 0) -> None:
        """Seed every generator: with the recipe's seed, and before each step with the seed plus
        the step's number, so a step draws the same numbers whether the steps before it ran or
        came from the cache."""
        import random

        seed = self.recipe.seed + step
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if self.recipe.model.source_kind != "onnx":
            import torch

            torch.manual_seed(seed)

    def _pipeline(self, baseline: Artifact) -> None:
        # Baseline: the reference outputs every later artifact is compared with.
        if baseline.format != "torch":
            self.add_artifact(baseline)  # registered first: its outputs are computed once
        baseline_outputs = self.outputs_of(baseline)
        self.state.reference_outputs = baseline_outputs[0]
        if baseline.format == "torch":
            self.state.torch_models[baseline.name] = baseline
        self.start_gates(baseline, baseline_outputs)
        if baseline.format == "torch":
            facts = self.torch_facts(baseline.module, self.state.reference_outputs)
        else:
            facts = {"size_bytes": baseline.size_bytes, "accuracy": self.evaluate(baseline).get("accuracy")}
        self.state.baseline = facts
        self.state.facts[baseline.name] = dict(facts)
        self.log(f"baseline accuracy {facts.get('accuracy')}")
        current = baseline
        reference = baseline.module
        last_torch = baseline  # the newest torch model: what exports convert and parity compares with
        for i, step in enumerate(self.recipe.steps):
            current = self.run_step(i, step, current, reference)
            if current.format == "torch":
                last_torch = current
        self._steps_done = True
        for exp in self.recipe.export:
            kind = step_kind(exp)
            cfg = getattr(exp, kind)
            if kind == "onnx":
                if last_torch.format == "torch":
                    float_parent = self.float_ancestor(last_torch)
                    if float_parent is not None:
                        # a QAT model exports as int8 only: its float parent, exported beside it, shows
                        # what int8 buys (speed-up) and costs (accuracy) on this CPU
                        self.ensure_onnx(float_parent)
                    self.ensure_onnx(last_torch)
                continue
            self.run_export(kind, cfg, last_torch)
        for art in self.state.artifacts:
            if art.format in ("onnx", "tflite"):
                self.metrics_of(art)
                if art.metadata.get("_parity") is None and art is not baseline:
                    self.check_parity(art, last_torch if last_torch.format == "torch" else baseline)
                if art.metadata.get("zipped_bytes") is None and art.path is not None and art.path.is_file():
                    # what the model adds to an app download (APKs and bundles are deflated)
                    art.metadata["zipped_bytes"] = zipped_size(art.path)
        self.gate_artifacts()
        self.log_artifacts()
        self.benchmark_all()

    def log_artifacts(self) -> None:
        for art in self.state.artifacts:
            if art.format == "torch":
                continue
            acc = self.state.metrics.get(art.name, {}).get("accuracy")
            self.log(f"artifact {art.name}: {art.format} {art.precision}, {art.size_bytes} bytes, accuracy {acc}")

    def package_if_asked(self, report: Any) -> None:
        if self.recipe.package is None:
            return
        from export.bundle import package_run

        pkg = self.recipe.package
        out = pkg.output or (self.run_dir / f"{self.recipe.name}-{pkg.platform}.zip")
        try:
            info = package_run(self.run_dir, pkg.artifact, pkg.platform, out, golden=pkg.golden_vectors)
        except EdgepackError as e:
            raise StepError("package", str(e)) from e
        report.bundle = info
        try:
            atomic_write_text(self.run_dir / "report.json", report.model_dump_json(indent=2))
        except OSError as e:
            raise RunFolderWriteError(self.run_dir / "report.json", e) from e
        self.log(f"bundle written: {out}")
