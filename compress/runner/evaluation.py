"""Outputs and task metrics of torch models and file artifacts on the eval split."""

from __future__ import annotations

from typing import Any

import numpy as np

from compress.core.types import Artifact
from compress.intake.data import Split, synthetic_inputs


class EvaluationMixin:
    """Runner methods: outputs and task metrics of torch models and file artifacts on the eval split."""

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
            return f"torch:{art.name}:{id(art)}"  # not id(art.module): that would load a model the cache answered
        if art.path is None or not art.path.is_file():
            return None
        st = art.path.stat()
        return f"file:{art.name}:{art.path}:{st.st_size}:{st.st_mtime_ns}"

    def outputs_of(self, thing: Any) -> list[np.ndarray]:
        """Outputs on the eval split of a torch module or a file artifact (computed once per artifact)."""
        if isinstance(thing, Artifact):
            known = self.state.baseline_outputs
            if known is not None and known[0] is thing:
                return known[1]
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

    def evaluate(self, thing: Any, outputs: np.ndarray | None = None, known_hash: str | None = None) -> dict[str, Any]:
        """Task metrics of a module or artifact on the eval split (``outputs``: its primary output, if known)."""
        from bench.accuracy import task_metrics

        y = self.eval_split.y
        ncls = len(self.recipe.task.labels) if self.recipe.task.labels else None
        primary = self.gatekeeper.specs[0] if self.gatekeeper is not None and self.gatekeeper.specs else None
        probabilities = bool(primary and primary.probabilities)
        # Cached per (model hash, eval data): the metrics of a model the cache answered need
        # not be computed again (the outputs the gates compare are computed where needed).
        key = self._eval_key(thing, ncls, probabilities, known_hash) if outputs is None else None
        if key is not None and (hit := self.cache.eval_get(*key)) is not None:
            return hit
        out = self.outputs_of(thing)[0] if outputs is None else outputs
        metrics = task_metrics(self.recipe.task.kind, out, y, self.state.reference_outputs, ncls,
                               probabilities=probabilities)
        if key is not None:
            self.cache.eval_put(*key, metrics)
        return metrics

    def _eval_key(self, thing: Any, ncls: int | None, probabilities: bool,
                  known_hash: str | None = None) -> tuple[str, str] | None:
        """(model hash, metric spec) of an evaluation the cache may answer, or None."""
        if self.cache is None or not self.cache.enabled or self.state.reference_outputs is None:
            return None
        import hashlib

        model_hash = known_hash or self.model_hash(thing)
        if model_hash is None:
            return None
        ref = np.ascontiguousarray(self.state.reference_outputs)
        spec = (f"{self.recipe.task.kind}|classes={ncls}|probabilities={probabilities}|"
                f"reference={hashlib.sha256(ref.tobytes()).hexdigest()[:16]}|"
                f"layout={thing.metadata.get('channels_last_inputs') if isinstance(thing, Artifact) else None}")
        return model_hash, spec

    def model_hash(self, thing: Any) -> str | None:
        """The hash evaluations and checks of a model are cached by (None: not cached).

        A torch model's hash counts the constants a reloaded copy holds as buffers (see
        :mod:`compress.runner.checkcache`), so a model trained in this run and the same model
        read back from the step cache in the next share their evaluations.
        """
        if self.cache is None or not self.cache.enabled:
            return None
        from compress.runner.stepkey import model_hash

        try:
            return model_hash(thing)
        except (TypeError, OSError, RuntimeError, AttributeError):
            return None

    @property
    def checks(self) -> Any:
        """The run's :class:`compress.runner.checkcache.CheckCache` (parity and fidelity results)."""
        from compress.runner.checkcache import CheckCache

        if self.cache is None:
            return CheckCache(None)
        if getattr(self, "_checks", None) is None:
            self._checks = CheckCache(self.cache)
        return self._checks

    def torch_facts(self, model: Any, outputs: np.ndarray | None = None) -> dict[str, Any]:
        """Params, MACs, size and accuracy of a torch model (an Artifact or a module).

        Like evaluations, the counts are cached by the model's hash: a model the step cache
        answered is not loaded for them.
        """
        specs = self.recipe.model.input_specs() or []
        h = self.model_hash(model)  # hashed once: the counts' key and the evaluation's
        key = (h, f"counts|inputs={specs}") if h is not None else None
        counts = self.cache.eval_get(*key) if key is not None else None
        if counts is None:
            from compress.intake.models import count_macs, count_params, torch_size_bytes

            module = model.module if isinstance(model, Artifact) else model
            counts = {"params": count_params(module), "macs": count_macs(module, specs)}
            try:
                counts["size_bytes"] = torch_size_bytes(module)
            except Exception:
                counts["size_bytes"] = None
            if key is not None:
                self.cache.eval_put(*key, counts)
        facts: dict[str, Any] = {k: counts.get(k) for k in ("params", "macs", "size_bytes")}
        facts["accuracy"] = self.evaluate(model, outputs, known_hash=h).get("accuracy")
        return facts

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
