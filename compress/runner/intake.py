"""The baseline model of a run, from the step cache when nothing it depends on changed.

A run starts by loading the recipe's model, checking it against the recipe (the intake
checks and each step's own check) and computing its outputs on the eval split: the
reference every later model is compared with. For a torch model that means importing
torch and the user's code, which is most of what a rerun of an unchanged recipe costs once
its steps come from the cache.

So the intake is cached like a step. Its key (:meth:`compress.runner.runcache.RunCache.intake_key`)
holds the whole recipe (the checks may read any of it), the contents of the model and data
files it names, the data's fingerprint, the seed, the target architecture and CPU flags, and
the toolkit's versions and source digest. The entry holds the model's hash and its outputs
on the eval split. On a hit the baseline is an artifact known by its hash whose module is
loaded only when something needs it (a step that runs, an export that is not cached); then
its hash is checked against the entry's, so a model that came out differently (code the
recipe does not point at changed) stops the run instead of being compared with stale outputs.

A factory is called after the run seeded torch with the recipe's seed, so one that draws its
weights makes the same model every run (and another with another seed). Only models that are
a function of the files the key hashes are cached: a ``.py`` factory
with a weights file, or a ``torch.export`` file. A factory without weights (its weights
drawn at random), one from an installed package or a pickle (their code is not in a file the
recipe names, so not hashed) always loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import EdgepackError
from compress.core.types import Artifact


def intake_cacheable(spec: Any) -> bool:
    """Whether the recipe's model is a function of the files the intake key hashes."""
    kind = spec.source_kind
    if kind == "exported":
        return True
    if kind != "factory" or spec.weights is None:
        return False
    file, sep, _fn = (spec.factory or "").rpartition(":")
    return bool(sep) and file.endswith(".py")


class IntakeMixin:
    """Runner methods: the baseline model, its checks and its outputs, from the cache when unchanged."""

    _intake_key: Any = None  # the key to store the intake under once its outputs are known

    def load_baseline(self) -> tuple[Artifact, list[np.ndarray] | None]:
        """The baseline artifact, checked against the recipe, and its outputs when the cache knows them.

        Raises:
            RecipeError: An intake or step check failed (nothing ran).
            InputFileError, UserCodeError: The model did not load.
        """
        from compress.intake.models import load_model

        spec = self.recipe.model
        key = self.cache.intake_key() if self.cache is not None and intake_cacheable(spec) else None
        hit = self.cache.intake_lookup(key) if key is not None else None
        if hit is not None:
            model_hash, outputs, digest = hit
            self.log(f"intake: model, data and recipe unchanged since step-cache entry {digest[:12]}: "
                     "the checks passed then; the model is loaded only if a step needs it")
            art = Artifact(name="baseline", format="torch", step="input", metadata={"source": spec.source_kind},
                           load_module=lambda: _load_checked(spec, model_hash), content_hash=model_hash)
            return art, outputs
        # a factory that draws its weights draws them from the recipe's seed: the same model every run
        self._seed(torch_too=spec.source_kind == "factory")
        baseline = load_model(spec)
        try:
            self.preflight(baseline)
        except (KeyboardInterrupt, Exception):
            raise
        except BaseException as e:  # the model's forward exited (SystemExit & co.) on the intake check
            from compress.core.errors import UserCodeError

            raise UserCodeError(f"the model's code raised {type(e).__name__} ({e}) on the intake check: "
                                "user code must return or raise an exception, not exit") from None
        self._intake_key = key
        return baseline, None

    def store_intake(self, baseline: Artifact, outputs: list[np.ndarray]) -> None:
        """Remember a checked baseline's hash and outputs (when its intake may be cached)."""
        key, self._intake_key = self._intake_key, None
        if key is None:
            return
        from compress.runner.stepkey import model_hash

        try:
            h = model_hash(baseline)
        except (TypeError, OSError, RuntimeError, AttributeError) as e:
            self.log(f"  intake not cached: the model cannot be hashed ({e})")
            return
        self.cache.intake_store(key, h, outputs)


def _load_checked(spec: Any, expected: str) -> Any:
    """Load the recipe's model; it must be the model the cache entry describes."""
    from compress.intake.models import load_model
    from compress.runner.stepkey import model_hash

    module = load_model(spec).module
    try:
        got = model_hash(module)
    except (TypeError, OSError, RuntimeError, AttributeError):
        got = None
    if got != expected:
        where = spec.factory or spec.exported
        raise EdgepackError(f"the model from {where} is not the one its step-cache entry describes (its weights "
                            "come out differently although the files the recipe names did not change: code they "
                            "import changed, or the model is not deterministic): run again with --no-cache")
    return module


def save_outputs(outputs: list[np.ndarray], path: Path) -> bool:
    """Write outputs to an ``.npz`` (False when one is not a plain numeric array)."""
    if not outputs or not all(isinstance(o, np.ndarray) and o.dtype.kind in "biufc" for o in outputs):
        return False
    with open(path, "wb") as f:
        np.savez(f, *outputs)
    return True


def load_outputs(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]
