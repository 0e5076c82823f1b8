"""The step cache as a run uses it: keys from the run's facts, step results in and out.

:mod:`compress.runner.stepcache` stores files and a JSON payload under a content key. This module
decides what goes into the key of a step or export of a run, and turns a step's result (the
artifact it made, its details and advisories, the extra artifacts it offered, the torch
module) into files and JSON and back, with paths moved to the new run folder.

The key of a step (or export) is made of

- its kind and config, and the recipe sections steps read (``model``, ``task``, ``data``,
  ``parity``, the ONNX export config, ``seed``), never ``bench``, ``tradeoff``, ``package``,
  the gates or the other steps (those reach a step only through its input);
- the contents of the files the recipe points at (model factory and weights, data function,
  any ``.py``/weights file a step config names);
- the input artifact's hash (a file's sha256; a torch module's parameters and buffers with
  its class) and the teacher's (the run's reference model);
- a fingerprint of the data splits;
- the target architecture and the CPU features that chose int8 defaults (target and host);
- the versions of the backends and a digest of edgepack's own source files (so a change of
  the toolkit is never answered from an entry an older toolkit made).

A torch result is stored with ``torch.save`` of the whole module (its classes must be
importable again: the user's model file is imported under a stable name); a result that
cannot be pickled or encoded is not cached (said in the log), and an entry that cannot be
decoded is a miss. Measured latencies are never cached.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress.core.errors import EdgepackError
from compress.core.step import StepResult
from compress.core.types import Artifact
from compress.runner.evalcache import EvalCache
from compress.runner.runcodec import NotCacheable, _Codec, _Decoder, save_module
from compress.runner.stepcache import StepCache
from compress.runner.stepkey import StepKey, fingerprint_arrays, hash_path, model_hash

# Recipe sections a step may read (see the module docstring).
STEP_RECIPE_SECTIONS = ("model", "task", "data", "parity", "seed")
_PACKAGES = ("compress", "export", "bench", "devices")
_MODULE_FILE = "module.pt"
_OUTPUTS_FILE = "outputs.npz"


SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout or site-packages holding compress/, export/, ...
_SOURCE_DIGEST: str | None = None


def source_digest(root: Path | None = None) -> str:
    """sha256 over edgepack's own Python files (paths and bytes); for this install computed once per process.

    Raises:
        RuntimeError: a package folder is missing under ``root`` (the digest would not cover it).
    """
    global _SOURCE_DIGEST
    if root is None and _SOURCE_DIGEST is not None:
        return _SOURCE_DIGEST
    base = root or SOURCE_ROOT
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        files = sorted((base / pkg).rglob("*.py"))
        if not files:
            raise RuntimeError(f"no Python files under {base / pkg}: the step cache key would not cover {pkg}/")
        for p in files:
            h.update(p.relative_to(base).as_posix().encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    if root is None:
        _SOURCE_DIGEST = h.hexdigest()
    return h.hexdigest()


def _referenced_files(recipe: Any, base: Path | None, cfg: dict[str, Any]) -> list[tuple[str, Path]]:
    """(label, path) of every existing file the recipe's model/data sections or the step config name."""
    refs: list[str] = []
    model = recipe.model
    for attr in ("factory", "weights", "exported", "pickle", "path", "onnx"):
        v = getattr(model, attr, None)
        if isinstance(v, (str, Path)):
            refs.append(str(v))
    data = recipe.data
    if data is not None:
        for attr in ("source", "function", "path"):
            v = getattr(data, attr, None)
            if isinstance(v, (str, Path)):
                refs.append(str(v))

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            refs.append(v)

    walk(cfg)
    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for ref in refs:
        text = ref.rsplit(":", 1)[0] if ref.count(":") == 1 and not ref.startswith(("builtin:", "http")) else ref
        if not text or "\n" in text or len(text) > 4096:
            continue
        p = Path(text)
        if not p.is_absolute() and base is not None:
            p = base / p
        try:
            if p.is_file() and p.resolve() not in seen:
                seen.add(p.resolve())
                out.append((_file_label(p, base, ref[len(text):]), p))
        except OSError:
            continue
    return out


def _file_label(path: Path, base: Path | None, suffix: str) -> str:
    """A referenced file's label in a step key: its path relative to the recipe's folder (or its
    name when it lies elsewhere), plus the ``:function`` it was named with. Never the absolute
    path: a project copied or moved elsewhere keeps its cache (the file's contents are hashed)."""
    rel = path.name
    if base is not None:
        try:
            rel = path.resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            pass
    return rel + suffix


def _module_loader(path: Path, digest: str) -> Callable[[], Any]:
    """Loads a cached step's torch module on first use (once; every artifact that held it shares it).

    The module stays in the cache entry until then: a run whose later steps are cached too never
    loads it, nor imports torch.
    """
    loaded: list[Any] = []

    def load() -> Any:
        if not loaded:
            import torch

            try:
                loaded.append(torch.load(path, weights_only=False))
            except FileNotFoundError as e:
                raise EdgepackError(f"the cached model of step-cache entry {digest[:12]} was removed during the "
                                    f"run ({path}): run again, or with --no-cache") from e
        return loaded[0]

    return load


@dataclass
class CachedStep:
    """A step's result read back from the cache, paths already in the new run folder."""

    result: StepResult
    digest: str
    duration_s: float | None = None


class RunCache:
    """The step cache and the evaluation cache of one run.

    Args:
        recipe: The validated recipe.
        recipe_dir: The folder relative recipe paths start from.
        data: The run's data splits (or None).
        arch: Target architecture that chose int8 defaults (``x86`` / ``arm``).
        enabled: False for ``--no-cache``: nothing read, nothing written.
        log: Where to say what was cached or why not.
    """

    def __init__(self, recipe: Any, recipe_dir: Path | None, data: Any, arch: str, enabled: bool = True,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.recipe = recipe
        self.recipe_dir = recipe_dir
        self.data = data
        self.arch = arch
        self.enabled = enabled
        self.log = log
        self.steps = StepCache(enabled=enabled)
        self.evals = EvalCache(enabled=enabled)
        self._data_fp: str | None = None
        self._versions: dict[str, str] | None = None
        self._cpu: list[str] | None = None
        self._reference: tuple[Any, str] | None = None  # the teacher and its hash: it does not change in a run

    # ------------------------------------------------------------------ key parts

    def data_fingerprint(self) -> str:
        if self._data_fp is None:
            arrays: list[Any] = []
            if self.data is not None:
                for split in ("train", "eval", "calibration"):
                    s = getattr(self.data, split, None)
                    if s is None:
                        continue
                    arrays += list(s.x) + ([s.y] if getattr(s, "y", None) is not None else [])
                    targets = getattr(s, "targets", None)
                    if targets:
                        arrays += [t for t in targets if isinstance(t, np.ndarray)]
            self._data_fp = fingerprint_arrays(*arrays) if arrays else "no-data"
        return self._data_fp

    def versions(self) -> dict[str, str]:
        if self._versions is None:
            from compress.runner.report import tool_versions

            self._versions = {**tool_versions(), "edgepack-source": source_digest()}
        return self._versions

    def cpu_flags(self) -> list[str]:
        if self._cpu is None:
            from compress.core.env import detect_cpu, host_cpu

            flags = []
            for who, cpu in (("target", detect_cpu()), ("host", host_cpu())):
                for k, v in sorted(cpu.as_dict().items()):
                    if isinstance(v, (bool, int, float, str)) and k not in ("model", "name"):
                        flags.append(f"{who}.{k}={v}")
            self._cpu = flags
        return self._cpu

    def artifact_hash(self, art: Any) -> str:
        """sha256 of a file artifact, or of a torch module's state (per object, computed once
        for modules that do not change afterwards: callers hash right before using it)."""
        # a pt2e graph module hashes as its cached copy will (reloading turns constants into
        # buffers): a step after QAT hits on the first rerun, not only from the second
        return model_hash(art)

    def _reference_hash(self, reference: Artifact) -> str:
        """The teacher's hash, computed once (every step's key names it; the teacher is never trained)."""
        if self._reference is None or self._reference[0] is not reference:
            self._reference = (reference, model_hash(reference))
        return self._reference[1]

    def key(self, kind: str, cfg: dict[str, Any], current: Artifact, reference: Artifact | None) -> StepKey | None:
        """The key of a step or export, or None when the input cannot be hashed (then it runs uncached).

        ``reference`` is the run's teacher (the baseline torch model), named in the key of every
        step after the first; neither model is loaded when its hash is known.
        """
        if not self.enabled:
            return None
        try:
            input_hash = self.artifact_hash(current)
            ref_hash = (self._reference_hash(reference)
                        if reference is not None and reference.holds_module and reference is not current else None)
        except (TypeError, OSError, RuntimeError) as e:
            self.log(f"  not cached: the input cannot be hashed ({e})")
            return None
        dump = self.recipe.model_dump(mode="json")
        onnx_cfg = self.recipe.export_config("onnx")
        config = {"step": cfg, "recipe": {k: dump.get(k) for k in STEP_RECIPE_SECTIONS},
                  "onnx_export": onnx_cfg.model_dump(mode="json") if onnx_cfg is not None else None,
                  "reference": ref_hash}
        return StepKey(kind=kind, config=config, input_hash=input_hash, arch=self.arch, versions=self.versions(),
                       files=self._file_hashes(cfg), data_fingerprint=self.data_fingerprint(), seed=self.recipe.seed,
                       cpu_flags=tuple(self.cpu_flags()))

    # ------------------------------------------------------------------ intake

    def _file_hashes(self, cfg: dict[str, Any]) -> dict[str, str]:
        """label -> :func:`hash_path` of every file the recipe's model/data sections or ``cfg`` name."""
        files: dict[str, str] = {}
        for label, p in _referenced_files(self.recipe, self.recipe_dir, cfg):
            files[label if label not in files else f"{label}#{len(files)}"] = hash_path(p)
        return files

    def intake_key(self) -> StepKey | None:
        """The key of the run's intake (see :mod:`compress.runner.intake`), or None when disabled."""
        if not self.enabled:
            return None
        try:
            files = self._file_hashes({})
        except OSError as e:
            self.log(f"  intake not cached: {e}")
            return None
        return StepKey(kind="intake", config={"recipe": self.recipe.model_dump(mode="json")}, input_hash="",
                       arch=self.arch, versions=self.versions(), files=files, data_fingerprint=self.data_fingerprint(),
                       seed=self.recipe.seed, cpu_flags=tuple(self.cpu_flags()))

    def intake_lookup(self, key: StepKey) -> tuple[str, list[np.ndarray], str] | None:
        """(model hash, its outputs on the eval split, entry digest) of a cached intake, or None."""
        from compress.runner.intake import load_outputs

        hit = self.steps.lookup(key)
        if hit is None:
            return None
        try:
            return str(hit.payload["model_hash"]), load_outputs(hit.files[_OUTPUTS_FILE].path), key.digest
        except Exception as e:  # noqa: BLE001  an entry that does not load is a miss
            self.log(f"  intake entry {key.digest[:12]} does not load ({type(e).__name__}: {e}): loading the model")
            return None

    def intake_store(self, key: StepKey, model_hash_: str, outputs: list[np.ndarray]) -> None:
        from compress.runner.intake import save_outputs

        with tempfile.TemporaryDirectory(prefix="edgepack-cache-") as tmp:
            path = Path(tmp) / _OUTPUTS_FILE
            if not save_outputs(outputs, path):
                self.log("  intake not cached: the model's outputs are not plain arrays")
                return
            if not self.steps.store(key, {_OUTPUTS_FILE: path}, {"model_hash": model_hash_}):
                self.log(f"  intake not cached: {self.steps.last_store_error}")

    # ------------------------------------------------------------------ steps

    def lookup(self, key: StepKey | None, run_dir: Path, step_dir: Path) -> CachedStep | None:
        """The cached result of a step, its files placed in the run folder; None on a miss."""
        if key is None:
            return None
        hit = self.steps.lookup(key)
        if hit is None:
            return None
        try:
            load = None
            if _MODULE_FILE in hit.files:
                load = _module_loader(hit.files[_MODULE_FILE].path, key.digest)
            for prefix, dest in (("step/", step_dir), ("run/", run_dir)):  # the step's folder, the run's
                replace(hit, files={n[len(prefix):]: f for n, f in hit.files.items() if n.startswith(prefix)}
                        ).materialise(dest)
            dec = _Decoder(run_dir, step_dir, load, hit.payload.get("module_hash") if load is not None else None)
            p = hit.payload
            result = StepResult(artifacts=dec.decode(p["artifacts"]), details=dec.decode(p["details"]),
                                advisories=dec.decode(p["advisories"]))
            return CachedStep(result=result, digest=key.digest, duration_s=p.get("duration_s"))
        except Exception as e:  # noqa: BLE001  an entry that does not load is a miss, never a failure
            self.log(f"  cache entry {key.digest[:12]} does not load ({type(e).__name__}: {e}): running the step")
            return None

    def store(self, key: StepKey | None, run_dir: Path, step_dir: Path, result: StepResult, duration_s: float) -> bool:
        """Store a finished step; False (and a log line) when it cannot be stored."""
        if key is None:
            return False
        codec = _Codec(run_dir, step_dir)
        try:
            # one list, encoded in order: an artifact named twice (a result's metadata and the
            # list) stays one object when read back
            payload = {"artifacts": codec.encode(list(result.artifacts)), "details": codec.encode(result.details),
                       "advisories": codec.encode(list(result.advisories)), "duration_s": round(duration_s, 3)}
        except NotCacheable as e:
            self.log(f"  not cached: {e}")
            return False
        # every file of the step's folder, not only those the payload names (a step's report files)
        if step_dir.is_dir():
            for p in step_dir.rglob("*"):
                if p.is_file() and not p.name.endswith(".part"):
                    codec.files.setdefault(f"step/{p.relative_to(step_dir).as_posix()}", p)
        with tempfile.TemporaryDirectory(prefix="edgepack-cache-") as tmp:
            files = dict(codec.files)
            holder = next((a for a in result.artifacts if a.holds_module), None)
            if holder is not None:
                mpath = Path(tmp) / _MODULE_FILE
                try:
                    save_module(holder.module, mpath)
                except Exception as e:  # noqa: BLE001  a module that does not pickle runs again next time
                    self.log(f"  not cached: the {holder.name} model does not pickle ({type(e).__name__}: {e})")
                    return False
                files[_MODULE_FILE] = mpath
                try:
                    # the next step's key names it: a rerun need not load the model to hash it
                    payload["module_hash"] = model_hash(holder)
                except (TypeError, OSError, RuntimeError, AttributeError):
                    pass
            ok = self.steps.store(key, files, payload)
        if not ok:
            self.log(f"  not cached: {self.steps.last_store_error}")
        return ok

    # ------------------------------------------------------------------ evaluations

    def eval_get(self, art_hash: str, spec: str) -> dict[str, Any] | None:
        return self.evals.get(art_hash, self.data_fingerprint(), spec, self.versions()) if self.enabled else None

    def eval_put(self, art_hash: str, spec: str, result: dict[str, Any]) -> None:
        if self.enabled:
            self.evals.put(art_hash, self.data_fingerprint(), spec, result, self.versions())
