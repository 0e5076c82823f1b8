"""Mobile bundles: the chosen model, its manifest, labels, model card and golden vectors.

``package_run`` builds a zip an Android or iOS developer can drop into an app, with a
``digest.json`` over every member (optionally Ed25519-signed, see ``export/signing.py``);
``verify_bundle`` (``export/bundle_verify.py``) checks one: safe names and sizes, checksums,
the signature, the model loads, and the golden vectors reproduce within tolerance. Inspired by ExecuTorch's bundled programs: the app's
own test can run the same golden vectors.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compress.core.fileio import atomic_path, sha256_file
from compress.core.errors import InputFileError
from export.bundle_drift import FINGERPRINT_FILE, REFERENCE_FILE, bundle_fingerprint, model_card_section, reference_source
from export.bundle_verify import VerifyResult, bundle_bytes, verify_bundle
from export.signing import DIGEST_FILE, digest_document

__all__ = ["VerifyResult", "bundle_bytes", "manifest_inputs", "package_run", "verify_bundle"]

Platform = Literal["android", "ios", "generic"]
BUNDLE_SCHEMA_VERSION = 1


def _prefix(platform: str, name: str) -> str:
    # Android apps read models from assets/; iOS apps from a resource folder in the app bundle.
    return {"android": f"assets/{name}/", "ios": f"Resources/{name}/"}.get(platform, f"{name}/")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _array_json(a: np.ndarray) -> dict[str, Any]:
    return {"shape": list(a.shape), "dtype": str(a.dtype), "data": a.reshape(-1).tolist()}


def _load_recipe(run_dir: Path) -> Any:
    import yaml

    from compress.intake.recipe import Recipe

    path = run_dir / "recipe.resolved.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        # the bundle reads the model, task and data sections; the steps are validated by the step
        # registry, which sits above this layer (and the run validated them already)
        data.pop("steps", None)
    return Recipe.model_validate(data, context={"check_files": False})


def _recipe_data(recipe: Any) -> tuple[Any, Any]:
    """The model's input specs and the recipe's data splits (each None when unknown or gone since the run)."""
    if recipe is None:
        return None, None
    from compress.intake.models import input_specs_of

    try:
        specs = input_specs_of(recipe.model)
    except Exception:  # noqa: BLE001  (a model file gone since the run: the session's own shapes follow)
        specs = None
    if recipe.data is None:
        return specs, None
    try:
        from compress.intake.data import load_dataset

        return specs, load_dataset(recipe.data, specs)
    except Exception:  # noqa: BLE001  (data gone since the run: golden vectors fall back to random inputs)
        return specs, None


def _golden_inputs(recipe: Any, specs: Any, data: Any, session: Any, n: int) -> list[np.ndarray]:
    """``n`` samples for the golden vectors: the recipe's eval data, else random inputs in the real shapes."""
    from bench.agent import take_samples

    if data is not None:
        return take_samples(data.eval.x, slice(0, n))
    if recipe is not None and specs is not None and len(specs) == len(session.inputs):
        from compress.intake.data import synthetic_inputs

        return synthetic_inputs(specs, n, recipe.seed).x
    from bench.agent import _inputs_for

    return _inputs_for(session, n)


def manifest_inputs(session: Any, xs: list[np.ndarray], layout: str) -> list[dict[str, Any]]:
    """The model's inputs as an app feeds them: the real shape of one request, the dynamic axes named apart.

    ``shape`` is what the golden vectors were made with (batch 1 on the batch axis);
    ``dynamic_axes`` maps each axis the model leaves free to a name (``batch`` or ``dim<N>``),
    and ``batch_axis`` is None for a fixed input (fed whole to every call).
    """
    from bench.agent import batch_axes_of

    out = []
    for spec, a, ax in zip(session.inputs, xs, batch_axes_of(xs)):
        shape = [int(d) for d in np.shape(a)]
        if ax is not None:
            shape[ax] = 1
        declared = spec["shape"]
        dynamic = {str(k): ("batch" if k == ax else f"dim{k}") for k, d in enumerate(declared) if d <= 0}
        out.append(dict(spec, shape=shape, declared_shape=list(declared), dynamic_axes=dynamic, batch_axis=ax,
                        layout=layout if len(shape) == 4 else None))
    return out


def _lineage(report: Any, name: str) -> list[dict[str, Any]]:
    chain, seen = [], set()
    art = report.artifact(name)
    while art is not None and art.name not in seen:
        seen.add(art.name)
        chain.append({"artifact": art.name, "step": art.step, "config_hash": art.config_hash, "sha256": art.sha256})
        art = report.artifact(art.parent) if art.parent else None
    steps = [{"step": s.name, "kind": s.kind, "config": s.config} for s in report.steps]
    return chain + [{"steps": steps}] if steps else chain


def _preprocessing(recipe: Any, layout: str) -> dict[str, Any]:
    pre: dict[str, Any] = {"layout": layout}
    if recipe is None or recipe.data is None:
        return pre
    if recipe.data.image_size:
        pre["resize"] = [recipe.data.image_size, recipe.data.image_size]
    if recipe.data.normalize is not None:
        nm = recipe.data.normalize
        pre.update({"scale": nm.scale, "mean": nm.mean, "std": nm.std,
                    "formula": "x = (raw * scale - mean[c]) / std[c]"})
    elif recipe.data.source == "builtin:digits":
        pre.update({"scale": 1 / 16, "mean": [0.0], "std": [1.0],
                    "formula": "x = raw * scale (digits pixels are 0..16)"})
    return pre


def _postprocessing(recipe: Any, has_labels: bool) -> dict[str, Any]:
    kind = recipe.task.kind if recipe is not None else "classification"
    if kind == "classification":
        post: dict[str, Any] = {"type": "softmax_topk", "top_k": recipe.task.top_k if recipe else 5,
                                "output_is": "logits"}
        if has_labels:
            post["labels_file"] = "labels.txt"
        return post
    if kind == "embedding":
        return {"type": "l2_normalize", "output_is": "embedding"}
    return {"type": "none", "output_is": "regression values"}


def _tflite_normalization(pre: dict[str, Any], channels: int) -> tuple[list[float], list[float]] | None:
    """TFLite metadata's (raw - mean) / std, from our (raw * scale - mean) / std."""
    if "scale" not in pre:
        return None
    scale = pre["scale"]
    mean = [m / scale for m in pre.get("mean", [0.0])]
    std = [s / scale for s in pre.get("std", [1.0])]
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    return mean, std


def _with_tflite_metadata(model: bytes, report: Any, recipe: Any, session: Any, labels: list[str] | None,
                          layout: str) -> tuple[bytes, dict[str, Any]]:
    """Embed the metadata Android's tooling reads; say so (or why not) in the manifest."""
    from export.tflite_metadata import ModelInfo, TensorInfo, add_metadata

    pre = _preprocessing(recipe, layout)
    inputs = []
    for s in session.inputs:
        shape = s["shape"]
        image = len(shape) == 4
        channels = (shape[3] if layout == "NHWC" else shape[1]) if image else 0
        norm = _tflite_normalization(pre, channels) if image else None
        size = ((shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])) if image else None
        inputs.append(TensorInfo(s["name"], "image" if image else "features", image=image, channels=channels,
                                 size=size, mean=norm[0] if norm else None, std=norm[1] if norm else None))
    outputs = [TensorInfo(s["name"], "logits" if labels else "output", labels_file="labels.txt" if labels else None)
               for s in session.outputs]
    kind = recipe.task.kind if recipe is not None else "model"
    info = ModelInfo(name=str(report.recipe.get("name")), description=f"{kind} model compressed by edgepack",
                     version=str(report.recipe.get("hash", "1"))[:12], inputs=inputs, outputs=outputs)
    files = {"labels.txt": ("\n".join(labels) + "\n").encode()} if labels else {}
    try:
        out = add_metadata(model, info, files)
    except ValueError as e:
        return model, {"written": False, "reason": str(e)}
    return out, {"written": True, "name": "TFLITE_METADATA", "schema": "tflite-support metadata_schema.fbs (M001)",
                 "packed_files": sorted(files)}


def _model_card(report: Any, recipe: Any, art: Any, platform: str, drift: list[str] | None = None) -> str:
    task = recipe.task.kind if recipe is not None else report.task.get("kind", "?")
    lines = [f"# Model card: {report.recipe.get('name')} / {art.name}", "",
             "## Intended use", "",
             f"A {task} model compressed by edgepack for on-device inference ({platform}). "
             "Use it on inputs prepared as `manifest.json` describes (preprocessing); outside that input "
             "distribution its accuracy is unknown.", "",
             "## Model", "",
             f"- format: {art.format}, precision {art.precision}, {art.size_bytes} bytes",
             f"- made by: {art.step} from {art.parent}",
             f"- recipe hash: {report.recipe.get('hash')}", "",
             "## Accuracy (eval split of the recipe's data)", ""]
    for k, v in (art.metrics or {}).items():
        if isinstance(v, (int, float)):
            lines.append(f"- {k}: {v:.4f}")
    if report.baseline and report.baseline.accuracy is not None:
        lines.append(f"- baseline (uncompressed) accuracy: {report.baseline.accuracy:.4f}")
    if art.parity is not None:
        lines.append(f"- parity vs {art.parity.reference}: max abs diff {art.parity.max_abs_diff:.3g}"
                     + (f", agreement {art.parity.agreement:.4f}" if art.parity.agreement is not None else ""))
    lines += ["", "## Latency per device", "", "| target | device | how | threads | batch | p50 ms | p90 ms | runs |",
              "|---|---|---|---|---|---|---|---|"]
    for t in art.targets:
        if t.latency_ms is None:
            note = "parity only (emulated)" if t.how == "emulated" else (t.error or "-")
            lines.append(f"| {t.target} | {t.device} | {t.how} | {t.threads} | {t.batch} | {note} | | |")
            continue
        s = t.latency_ms
        lines.append(f"| {t.target} | {t.device} | {t.how} | {t.threads} | {t.batch} | {s.p50:.3f} | {'-' if s.p90 is None else f'{s.p90:.3f}'} | {s.runs} |")
    lines += ["", "## Limitations", "",
              "- Latencies marked `estimated` come from a device profile, not a measurement.",
              "- Accuracy was measured on the recipe's eval split only."]
    lines += drift or []
    return "\n".join(lines) + "\n"


def package_run(run_dir: Path, artifact: str, platform: Platform, out: Path, golden: int = 4,
                force: bool = False, sign_key: Path | None = None) -> dict[str, Any]:
    """Write a bundle zip for one artifact of a finished run; return a summary.

    Args:
        run_dir: The run folder (holding ``report.json``).
        artifact: The artifact's name in the report.
        platform: Where the files go in the zip (``assets/NAME/``, ``Resources/NAME/`` or ``NAME/``).
        out: The zip to write (atomically).
        golden: How many golden vectors to record.
        force: Bundle even from a run that did not finish ``ok`` or an artifact whose
            parity check failed (the manifest then says so).
        sign_key: An Ed25519 private key PEM: ``digest.json`` then carries its signature.

    Raises:
        InputFileError: the run, the artifact or its file is missing, the file changed since
            the run, the key cannot be read, or (without ``force``) the run failed or the
            artifact failed parity.
    """
    private_key = None
    if sign_key is not None:  # a bad key fails before any work
        from export.signing import load_private_key

        private_key = load_private_key(sign_key)
    from bench.agent import num_samples, take_samples
    from compress.core.report_schema import load_report
    from bench.runtime import open_model, predict

    report = load_report(run_dir)
    art = report.artifact(artifact)
    if art is None:
        names = ", ".join(a.name for a in report.artifacts) or "none"
        raise InputFileError(f"{run_dir}: no artifact {artifact!r} in the report (artifacts: {names})")
    if art.format not in ("onnx", "tflite") or not art.path:
        raise InputFileError(f"artifact {artifact!r} is {art.format}; only ONNX and TFLite files can be bundled")
    model_path = Path(art.path) if Path(art.path).is_absolute() else run_dir / art.path
    if not model_path.is_file():
        raise InputFileError(f"{model_path}: the artifact's model file is missing")
    if art.sha256 and sha256_file(model_path) != art.sha256:
        raise InputFileError(f"{model_path}: the file changed since the run (its sha256 differs from the report's); "
                             "run the recipe again")
    warnings = []
    # A degraded run (some artifact failed its fidelity gate) may still bundle an artifact that passed its own.
    if report.status not in ("ok", "degraded"):
        warnings.append(f"the run's status is {report.status}" + (f" ({report.error})" if report.error else ""))
    if art.status == "degraded":
        reasons = (art.gate or {}).get("reasons") or []
        warnings.append(f"{art.name} failed its fidelity gate" + (f" ({'; '.join(reasons)})" if reasons else ""))
    if art.parity is not None and art.parity.passed is False:
        warnings.append(f"{art.name} failed its parity check against {art.parity.reference} "
                        f"(max abs diff {art.parity.max_abs_diff:.3g})")
    if warnings and not force:
        raise InputFileError(f"refusing to bundle {art.name}: " + "; ".join(warnings)
                             + ". Fix the run, or pass --force to bundle it anyway (the manifest will say so)")
    recipe = _load_recipe(run_dir)
    session = open_model(model_path)
    specs, dataset = _recipe_data(recipe)
    xs = _golden_inputs(recipe, specs, dataset, session, golden)
    ys = predict(session, xs)
    labels = list(recipe.task.labels) if recipe is not None and recipe.task.labels else None
    layout = art.metadata.get("layout", "NCHW")
    out_scale = max((o.get("quantization") or {}).get("scale", 0.0) for o in session.outputs)
    ymax = max(float(np.abs(y).max()) for y in ys)
    atol = max(1e-3 * (1.0 + ymax), 2.0 * out_scale)
    model_name = f"model.{art.format}"
    prefix = _prefix(platform, report.recipe.get("name", "model"))
    model_bytes = model_path.read_bytes()
    tflite_metadata = None
    if art.format == "tflite":
        model_bytes, tflite_metadata = _with_tflite_metadata(model_bytes, report, recipe, session, labels, layout)
    files: dict[str, bytes] = {model_name: model_bytes}
    if labels:
        files["labels.txt"] = ("\n".join(labels) + "\n").encode()
    golden_doc = {
        "inputs_are": "float values before any quantization: for an int8 input, feed "
                      "round(x / scale) + zero_point with the input's quantization from manifest.json",
        "outputs_are": "float values (int8 outputs dequantized: (q - zero_point) * scale)",
        "tolerance": {"atol": atol, "rtol": 1e-3},
        "top1_must_match": (recipe.task.kind == "classification") if recipe is not None else False,
        "vectors": [{"inputs": {s["name"]: _array_json(x) for s, x in zip(session.inputs, take_samples(xs, slice(i, i + 1)))},
                     "outputs": {s["name"]: _array_json(y[i : i + 1] if np.ndim(y) else y) for s, y in zip(session.outputs, ys)}}
                    for i in range(num_samples(xs))],
    }
    files["golden.json"] = json.dumps(golden_doc).encode()
    fingerprint, no_fingerprint = None, "the run's recipe is gone"
    if recipe is not None:
        try:
            fingerprint, no_fingerprint = bundle_fingerprint(recipe, dataset, session, layout, labels)
        except Exception as e:  # noqa: BLE001  (the bundle is still worth shipping; the manifest says why not)
            no_fingerprint = f"fingerprinting the data failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
    if fingerprint is not None:
        files[FINGERPRINT_FILE] = json.dumps(fingerprint).encode()
        files[REFERENCE_FILE] = reference_source()
    drift_section = model_card_section(fingerprint, no_fingerprint)
    files["MODEL_CARD.md"] = _model_card(report, recipe, art, platform, drift_section).encode()
    manifest = {
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "name": report.recipe.get("name"),
        "artifact": art.name,
        "platform": platform,
        "format": art.format,
        "precision": art.precision,
        "model_file": model_name,
        "runtime": "onnxruntime" if art.format == "onnx" else "LiteRT (ai-edge-litert / TensorFlow Lite)",
        "inputs": manifest_inputs(session, xs, layout),
        "outputs": session.outputs,
        "preprocessing": _preprocessing(recipe, layout),
        "postprocessing": _postprocessing(recipe, labels is not None),
        "task": report.task,
        "metrics": {k: v for k, v in (art.metrics or {}).items() if isinstance(v, (int, float))},
        "golden_vectors": {"file": "golden.json", "count": len(golden_doc["vectors"])},
        "tflite_metadata": tflite_metadata,
        "fingerprint": ({"file": FINGERPRINT_FILE, "reference_check": REFERENCE_FILE,
                         "samples": fingerprint["reference"]["samples"], "format_version": fingerprint["format_version"]}
                        if fingerprint is not None else {"file": None, "reason": no_fingerprint}),
        "warnings": warnings,
        "files": {name: _sha(data) for name, data in files.items()},
        "provenance": {"recipe_name": report.recipe.get("name"), "recipe_hash": report.recipe.get("hash"),
                       "run_created": report.created, "lineage": _lineage(report, art.name), "tools": report.tool},
    }
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()
    files[DIGEST_FILE] = digest_document(files, private_key)
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(prefix + name, data)
    signed_by = None
    if private_key is not None:
        from export.signing import key_fingerprint

        signed_by = key_fingerprint(private_key.public_key())
    return {"path": str(out), "artifact": art.name, "platform": platform, "prefix": prefix,
            "files": sorted(prefix + n for n in files), "sha256": _sha(out.read_bytes()), "signed_by": signed_by,
            "no_fingerprint": None if fingerprint is not None else no_fingerprint}
