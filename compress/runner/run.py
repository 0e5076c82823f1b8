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
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from compress.core.fileio import atomic_write_text, zipped_size
from compress.core.types import Artifact
from compress.intake.data import Dataset, load_dataset
from compress.core.errors import EdgepackError, StepError, TargetsFailed
from compress.intake.recipe import Recipe, step_kind
from compress.intake.recipe_io import RecipeSource
from compress.runner.evaluation import EvaluationMixin
from compress.runner.intake import IntakeMixin
from compress.runner.stepping import SteppingMixin
from compress.runner.parity import ParityMixin
from compress.runner.gates import GatingMixin
from compress.runner.benchmarks import BenchmarkingMixin
from compress.runner.report import ReportingMixin, tool_versions
from compress.runner.shadowing import ShadowMixin
from compress.runner.state import LineageMixin, RunState
from compress.runner.progress import RunProgress
from compress.runner.quiet import library_output_to
from compress.runner.folder import (
    RunFolderLock,
    RunFolderWriteError,
    RunLog,
    remove_old_reports,
    remove_stale_files,
    write_error_of,
)


def environment() -> dict[str, Any]:
    from bench.agent import device_facts

    from compress.core.env import detect_cpu, host_cpu

    env = device_facts()
    env["versions"] = tool_versions()
    # what chose the int8 defaults (the target CPU: $EDGEPACK_CPUINFO when set) and what measured
    env["cpu_features"] = {"target": detect_cpu().as_dict(), "host": host_cpu().as_dict()}
    return env


class Runner(LineageMixin, IntakeMixin, EvaluationMixin, SteppingMixin, ParityMixin, GatingMixin, BenchmarkingMixin,
             ShadowMixin, ReportingMixin):
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
        self.progress = RunProgress(console, self.log)
        self.state = RunState()
        self.data: Dataset | None = None
        self.created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self._log: RunLog | None = None
        self._steps_done = False  # torch models are final (their outputs may be cached) once True
        self.gatekeeper: Any = None  # compress.runner.gates.Gatekeeper, once the baseline's outputs are known

    # ------------------------------------------------------------------ logging

    def log(self, msg: str, style: str = "") -> None:
        """One line to the console and log.txt, printed as it is: a target named ``adb:phone:``
        or a path with ``[red]`` in it is never read as emoji or markup. ``style`` (e.g.
        ``"bold"``) colours the whole line on the console only."""
        from compress.core.console import plain
        from devices.untrusted import clean_text

        msg = clean_text(msg, 20_000)  # a board's text reaches the log: no terminal escapes
        if self.console is not None:
            self.console.print(plain(msg, style), highlight=False)
        if self._log is not None:
            self._log.write(f"{dt.datetime.now().strftime('%H:%M:%S')} {msg}\n")

    # ------------------------------------------------------------------ evaluation


    # ------------------------------------------------------------------ stages


    # ------------------------------------------------------------------ fidelity gates


    def _log_traceback(self) -> None:
        """Keep the traceback of an unexpected error in log.txt (never on the console)."""
        if self._log is not None:
            self._log.write(traceback.format_exc())


    # ------------------------------------------------------------------ report


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

        removed = remove_stale_files(self.run_dir)
        remove_old_reports(self.run_dir)
        self.env = environment()
        self._log = RunLog(self.run_dir / "log.txt")
        try:
            with library_output_to(self.run_dir / "log.txt"):
                return self._work(removed)
        finally:
            self._log.close()

    def _work(self, removed: list[Path]) -> Any:
        """The run itself, once its folder, log and environment are set up."""
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
        baseline, baseline_outputs = self.load_baseline()
        self.check_targets()
        self._seed()
        status, error = "ok", None
        try:
            self._pipeline(baseline, baseline_outputs)
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

    def check_targets(self) -> None:
        """Reach every device target before any work: an unreachable board, a phone that is
        not there or an emulation root never set up fails now, not after the training."""
        from devices.names import parse_target
        from devices.targets import make_target

        errors = []
        for name in self.recipe.bench.targets:
            if not parse_target(name).reachable:
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

    def _seed(self, step: int = 0, torch_too: bool = False) -> None:
        """Seed every generator: with the recipe's seed, and before each step with the seed plus
        the step's number, so a step draws the same numbers whether the steps before it ran or
        came from the cache. torch is seeded when it is loaded already or ``torch_too`` (a step
        about to run): a run whose models all come from the cache does not import it."""
        import random
        import sys

        seed = self.recipe.seed + step
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if self.recipe.model.source_kind != "onnx" and (torch_too or "torch" in sys.modules):
            import torch

            torch.manual_seed(seed)

    def _pipeline(self, baseline: Artifact, baseline_outputs: list[np.ndarray] | None = None) -> None:
        # Baseline: the reference outputs every later artifact is compared with (known already
        # when the intake came from the cache).
        if baseline.format != "torch":
            self.add_artifact(baseline)  # registered first: its outputs are computed once
        if baseline_outputs is None:
            baseline_outputs = self.outputs_of(baseline)
            self.store_intake(baseline, baseline_outputs)
        self.state.baseline_outputs = (baseline, baseline_outputs)
        self.state.reference_outputs = baseline_outputs[0]
        if baseline.format == "torch":
            self.state.torch_models[baseline.name] = baseline
        self.start_gates(baseline, baseline_outputs)
        if baseline.format == "torch":
            facts = self.torch_facts(baseline, self.state.reference_outputs)
        else:
            facts = {"size_bytes": baseline.size_bytes, "accuracy": self.evaluate(baseline).get("accuracy")}
        self.state.baseline = facts
        self.state.facts[baseline.name] = dict(facts)
        self.log(f"baseline accuracy {facts.get('accuracy')}")
        current = baseline
        reference = baseline if baseline.format == "torch" else None  # the teacher of every step
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
        files = [a for a in self.state.artifacts if a.format in ("onnx", "tflite")]
        with self.progress(f"evaluate and check {len(files)} artifacts against their parents", len(files)) as advance:
            for art in files:
                self._check_file(art, baseline, last_torch)
                advance(1, note=art.name)
        self.gate_artifacts()
        self.log_artifacts()
        self.benchmark_all()
        self.shadow_all()

    def _check_file(self, art: Artifact, baseline: Artifact, last_torch: Artifact) -> None:
        """Task metrics, parity against its parent by lineage, and its zipped size."""
        self.metrics_of(art)
        if art.name not in self.state.parity and art is not baseline:
            # against the model it was made from, by lineage
            self.check_parity(art, self.parent_of(art) or (last_torch if last_torch.format == "torch" else baseline))
        if art.metadata.get("zipped_bytes") is None and art.path is not None and art.path.is_file():
            # what the model adds to an app download (APKs and bundles are deflated)
            art.metadata["zipped_bytes"] = zipped_size(art.path)

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
