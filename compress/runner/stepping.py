"""Running steps and exports: their folders and contexts, the step cache, format boundaries."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from compress.core.fileio import config_hash
from compress.core.types import Artifact
from compress.core.step import StepContext, StepResult
from compress.core.errors import EdgepackError, RecipeProblem, StepError
from compress.intake.recipe import step_config, step_kind
from compress.steps.registry import EXPORTS, STEPS, load
from devices.targets import is_arm_target


class SteppingMixin:
    """Runner methods: steps and exports, their folders and contexts, the step cache, format boundaries."""

    def _step_folder(self, step_dir: Path) -> Path:
        """A step's or export's folder, made clean for it."""
        if step_dir.is_dir() and step_dir not in self._dirs_used:
            # what a killed or earlier run left in this step's folder (a resumed run, a rerun
            # into the same folder): the step starts clean, and the cache stores only its files
            shutil.rmtree(step_dir)
        self._dirs_used.add(step_dir)
        step_dir.mkdir(parents=True, exist_ok=True)
        return step_dir

    def _context(self, step_dir: Path, step_name: str, reference: Artifact | None) -> StepContext:
        """The context of a step that runs (not of one the cache answers: its models stay unloaded)."""
        return StepContext(
            recipe=self.recipe, run_dir=self.run_dir, step_dir=step_dir, step_name=step_name, data=self.data,
            reference=reference.module if reference is not None else None, log=self.log, evaluate=self.evaluate,
            target_arch=self.target_arch(), onnx_of=self.ensure_onnx, progress=self.progress,
        )

    def at_boundary(self, entry: Any, cfg: Any, current: Artifact, name: str) -> Artifact:
        """The input a step is given: converted (torch -> ONNX, once per model, parity-checked
        against it) when the step takes another format than the pipeline holds."""
        want = entry.wants(cfg, current.format)
        if want == current.format:
            return current
        if want not in entry.accepts or (current.format, want) != ("torch", "onnx"):
            raise StepError(name, f"{entry.kind} accepts {', '.join(entry.accepts)} models, got {current.format}")
        return self.ensure_onnx(current)

    def target_arch(self) -> str:
        """x86 unless every benchmark target is ARM (then int8 defaults follow ARM kernels)."""
        targets = self.recipe.bench.targets
        arm = [t for t in targets if is_arm_target(t)]
        return "arm" if arm and len(arm) == len([t for t in targets if t != "local"]) and "local" not in targets else "x86"

    def preflight(self, baseline: Artifact) -> None:
        """Step checks against the loaded model, before any work starts."""
        from compress.intake.models import intake_problems

        problems: list[RecipeProblem] = [self.source.problem(loc, msg)
                                         for loc, msg in intake_problems(baseline, self.recipe, self.data)]
        for i, step in enumerate(self.recipe.steps):
            kind = step_kind(step)
            check = STEPS[kind].check
            if check is None:
                continue
            for sub, msg in check(step_config(step), baseline, self.recipe, self.data) or []:
                loc = ("steps", i, kind) + tuple(sub)
                problems.append(self.source.problem(loc, msg))
        if problems:
            raise self.source.error(problems)

    def run_step(self, index: int, step: Any, current: Artifact, reference: Artifact | None) -> Artifact:
        """Run (or answer from the step cache) one step of the recipe; return the model the
        pipeline continues with. ``reference`` is the teacher: the baseline torch model."""
        kind = step_kind(step)
        cfg = step_config(step)
        entry = STEPS[kind]
        name = f"{index + 1:02d}-{kind}"
        record: dict[str, Any] = {"index": index + 1, "kind": kind, "name": name,
                                  "config": cfg.model_dump(mode="json"), "status": "ok"}
        current = self.at_boundary(entry, cfg, current, name)
        self.state.steps.append(record)
        self.log(f"step {name}", style="bold")
        record["input"] = current.name
        if current.format == "torch":
            # the previous step's "after" (the module has not changed since)
            record["before"] = dict(self.state.facts.get(current.name) or self.torch_facts(current))
        else:
            record["before"] = self.file_facts(current)
        step_dir = self._step_folder(self.run_dir / "steps" / name)
        key = self.cache.key(kind, record["config"], current, reference) if self.cache is not None else None
        hit = self.cache.lookup(key, self.run_dir, step_dir) if key is not None else None
        t0 = time.perf_counter()
        try:
            if hit is not None:
                step_result = self._from_cache(record, hit)
            else:
                self._seed(index + 1, torch_too=True)
                step_result = entry.run(current, cfg, self._context(step_dir, name, reference))
        except KeyboardInterrupt as e:
            record["status"] = "interrupted"
            self._keep_advisories(e)
            raise
        except EdgepackError as e:
            record["status"] = "failed"
            record["error"] = str(e)
            self._keep_advisories(e)
            raise
        except Exception as e:
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}"
            self._log_traceback()
            self._keep_advisories(e)
            raise StepError(name, f"{type(e).__name__}: {e}") from e
        finally:
            record["duration_s"] = round(time.perf_counter() - t0, 3)
        result = step_result.artifact
        result.step = result.step or name
        result.config_hash = result.config_hash or config_hash(cfg)
        if hit is None and key is not None:
            if self.cache.store(key, self.run_dir, step_dir, step_result, record["duration_s"]):
                record["cache_key"] = key.digest[:16]
                self.log(f"  stored in the step cache, entry {key.digest[:12]}")
        self.state.advisories.extend(step_result.advisories)
        record["details"] = step_result.details
        made_as = result.name
        if result.format == "torch" and result is not current:
            result.name = self._unique_name(result.name)  # a second prune's model is not the first's
        for extra in step_result.extras:
            if extra.parent == made_as:
                extra.parent = result.name
            if extra.step == "export:onnx" and self._exported_torch(extra.parent, result, current):
                # the step's own export of its result or of its input (made with the run's exporter
                # and config, e.g. QAT measures its int8 ONNX against its float input's): that
                # model's ONNX export, not made twice
                self.state.onnx_exports.setdefault(extra.parent, extra)
            self.add_artifact(extra)
        if result.format == "torch":
            record["after"] = self.torch_facts(result)
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

    def _exported_torch(self, name: str | None, result: Artifact, current: Artifact) -> bool:
        """Whether ``name`` is a torch model of this run a step's ONNX export may stand for: its result or its input."""
        return any(a.format == "torch" and a.name == name for a in (result, current)) \
            or name in self.state.torch_models

    def _keep_advisories(self, e: BaseException) -> None:
        """What a step advised before it stopped (Ctrl-C, a failure): ``noting`` attaches it to the exception."""
        self.state.advisories.extend(getattr(e, "advisories", ()))

    def _from_cache(self, record: dict[str, Any], hit: Any) -> StepResult:
        """A step's result from the step cache, as if the step had just returned it."""
        record["cached"] = True
        record["cache_key"] = hit.digest[:16]
        self.state.cached.update(a.name for a in hit.result.artifacts)
        took = f" (it took {hit.duration_s:.1f} s)" if hit.duration_s is not None else ""
        self.log(f"  cached: {record['name']} from the step cache, entry {hit.digest[:12]}{took}")
        return hit.result

    def ensure_onnx(self, torch_art: Artifact) -> Artifact:
        """The ONNX export of a torch artifact, made once, parity-checked, registered."""
        cached = self.state.onnx_exports.get(torch_art.name)
        if cached is not None:
            return cached
        from compress.intake.recipe import OnnxExportConfig

        cfg = self.recipe.export_config("onnx") or OnnxExportConfig()
        art = self.run_export("onnx", cfg, torch_art)[0]
        self.state.onnx_exports[torch_art.name] = art
        return art

    def run_export(self, kind: str, cfg: Any, source: Artifact) -> list[Artifact]:
        """Run one export; check each result's parity against the torch model."""
        step_name = f"export:{kind}"
        step_dir = self._step_folder(self.run_dir / "exports" / f"{kind}-{source.precision}")
        self.log(f"export {kind} ({source.precision})", style="bold")
        key = (self.cache.key(step_name, cfg.model_dump(mode="json"), source, None)
               if self.cache is not None and source.format == "torch" else None)
        hit = self.cache.lookup(key, self.run_dir, step_dir) if key is not None else None
        t0 = time.perf_counter()
        try:
            if hit is not None:
                self.log(f"  cached: export {kind} from the step cache, entry {hit.digest[:12]}")
                result = hit.result
                self.state.cached.update(a.name for a in result.artifacts)
            else:
                with self.progress(f"export {kind} ({source.precision})"):
                    # the model exported is the context's reference (what the export compares with)
                    result = load(EXPORTS[kind])(source, cfg, self._context(step_dir, step_name, source))
                if key is not None:
                    self.cache.store(key, self.run_dir, step_dir, result, time.perf_counter() - t0)
        except EdgepackError as e:
            self._keep_advisories(e)
            raise
        except Exception as e:
            self._log_traceback()
            self._keep_advisories(e)
            raise StepError(step_name, f"{type(e).__name__}: {e}") from e
        self.state.advisories.extend(result.advisories)
        for art in result.artifacts:
            art.metadata.setdefault("export_seconds", round(time.perf_counter() - t0, 3))
            self.add_artifact(art)
            self.check_parity(art, source)
        return list(result.artifacts)
