"""Numeric parity of every file artifact against the model it came from."""

from __future__ import annotations

from compress.core.types import Advisory, Artifact
from compress.core.errors import StepError


class ParityMixin:
    """Runner methods: numeric parity of every file artifact against the model it came from."""

    def check_parity(self, art: Artifact, source: Artifact) -> None:
        """Compare an exported artifact with the model it came from, on eval inputs.

        Answered from the cache when both models and the settings are unchanged (see
        :mod:`compress.runner.checkcache`): then neither model runs.
        """
        from bench.parity import compare_outputs
        from compress.core.report_schema import Parity

        p = self.recipe.parity
        is_float = art.precision in ("fp32",) and source.precision == "fp32"
        tolerance, min_agreement = (p.atol, p.min_agreement) if is_float else (None, None)
        settings = {"task": self.recipe.task.kind, "tolerance": tolerance, "min_agreement": min_agreement,
                    "layout": [art.metadata.get(k) for k in ("channels_last_inputs", "channels_last_outputs")]}
        ids = (self.model_hash(art), self.model_hash(source))
        parity = self.checks.get("parity", ids, settings, Parity, source.name)
        if parity is None:
            ref = self.outputs_of(source)[0]
            out = self.outputs_of(art)[0]
            parity = compare_outputs(ref, out, source.name, self.recipe.task.kind,
                                     tolerance=tolerance, min_agreement=min_agreement)
            self.checks.put("parity", ids, settings, parity)
        self.state.parity[art.name] = parity
        verdict = "" if parity.passed is None else (" ok" if parity.passed else " FAILED")
        self.log(f"  parity {art.name} vs {source.name}: max abs diff {parity.max_abs_diff:.2e}"
                 + (f", agreement {parity.agreement:.4f}" if parity.agreement is not None else "") + verdict)
        if parity.passed is False:
            msg = (f"{art.name} differs from {source.name}: max abs diff {parity.max_abs_diff:.3g} > atol {p.atol:g}"
                   + (f" or agreement {parity.agreement:.4f} < {p.min_agreement}" if parity.agreement is not None else ""))
            if p.fail:
                raise StepError(art.step or "export", msg + " (relax parity.atol or set parity.fail: false to accept)")
            self.state.advisories.append(Advisory("parity_failed", msg, "warning", art.name))
