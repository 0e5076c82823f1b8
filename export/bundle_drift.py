"""A bundle's drift side: ``fingerprint.json`` and ``drift_check.py`` at package time, ``compress drift`` after.

``bundle_fingerprint`` fingerprints (``bench/fingerprint.py``) the recipe's calibration and
eval splits and the bundled model's outputs on them; ``package_run`` writes it beside the
manifest, among the checksummed files. ``drift_of_bundle`` verifies a bundle, reads its
fingerprint, runs its model on new inputs and compares (``bench/drift.py``). The model card
section and the Kotlin snippet an app copies are here too (docs/drift.md shows the same).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import InputFileError

FINGERPRINT_FILE = "fingerprint.json"
REFERENCE_FILE = "drift_check.py"


def reference_source() -> bytes:
    """The numpy-only reference check, shipped in the bundle as ``drift_check.py``."""
    return (Path(__file__).with_name("drift_reference.py")).read_bytes()


def bundle_fingerprint(recipe: Any, data: Any, session: Any, layout: str,
                       labels: list[str] | None) -> tuple[dict[str, Any] | None, str | None]:
    """The fingerprint of the recipe's calibration + eval data and the model's outputs on it.

    Returns:
        (the document, None), or (None, why there is none): no data in the recipe, or data
        that no longer loads.
    """
    from bench.agent import concat_samples, num_samples
    from bench.fingerprint import make_fingerprint
    from bench.outputs import resolve_outputs
    from bench.runtime import predict

    if recipe.data is None:
        return None, "the recipe has no data section: nothing describes the inputs the model expects"
    if data is None:
        return None, f"the recipe's data ({recipe.data.source}) could not be loaded again when the bundle was made"
    xs = concat_samples([list(data.calib.x), list(data.eval.x)], data.eval.batch_axes)
    ys = predict(session, xs)
    names = [o["name"] for o in session.outputs]
    declared = recipe.model.outputs if recipe.model.outputs is not None else None
    resolved = resolve_outputs(ys, declared, recipe.task.kind, getattr(recipe.task, "detection", None), names)
    outputs = [{"name": n, "classification": r.task == "classification" and r.decision == "argmax",
                "logits": not r.probabilities} for n, r in zip(names, resolved)]
    inputs = [{"name": s["name"], "batch_axis": ax} for s, ax in zip(session.inputs, data.eval.batch_axes)]
    source = {"data": data.source, "splits": {"calibration": len(data.calib), "eval": len(data.eval)},
              "samples": num_samples(xs),
              "inputs_are": "float values as fed to the model (after preprocessing, before any int8 quantization)"}
    return make_fingerprint(inputs, list(xs), outputs, ys, layout=layout, labels=labels, source=source), None


KOTLIN_SNIPPET = """\
// Drift check against the bundle's fingerprint.json: the same numbers as drift_check.py.
import kotlin.math.abs
import kotlin.math.exp
import kotlin.math.ln
import kotlin.math.max
import kotlin.math.sqrt

/** Bucket of a value: 0 underflow, 1..B the inner bins, B + 1 overflow (edges e[0..B] of a feature). */
fun bucketOf(x: Double, edges: DoubleArray): Int {
    val b = edges.size - 1
    if (x < edges[0]) return 0
    if (x > edges[b]) return b + 1
    var lo = 0
    var hi = edges.size            // k = how many edges are <= x, capped at B
    while (lo < hi) { val mid = (lo + hi) ushr 1; if (edges[mid] <= x) lo = mid + 1 else hi = mid }
    return minOf(lo, b)
}

/** Counts of one feature over a window of requests (a channel, a cell, the score). */
class FeatureWindow(private val edges: DoubleArray) {
    val counts = LongArray(edges.size + 1)
    fun add(x: Double) { counts[bucketOf(x, edges)]++ }
}

/** PSI = sum((a - e) * ln(a / e)), shares floored at eps (rules.psi_epsilon). */
fun psi(reference: LongArray, current: LongArray, eps: Double = 1e-4): Double {
    val rn = reference.sum().toDouble()
    val cn = current.sum().toDouble()
    var s = 0.0
    for (i in reference.indices) {
        val e = max(reference[i] / rn, eps)
        val a = max(current[i] / cn, eps)
        s += (a - e) * ln(a / e)
    }
    return s
}

/** Binned KS: the largest gap between cumulative shares, over all buckets but the last. */
fun ksBinned(reference: LongArray, current: LongArray): Double {
    val rn = reference.sum().toDouble()
    val cn = current.sum().toDouble()
    var cr = 0.0
    var cc = 0.0
    var d = 0.0
    for (i in 0 until reference.size - 1) {
        cr += reference[i] / rn
        cc += current[i] / cn
        d = max(d, abs(cr - cc))
    }
    return d
}

/** KS critical value at level alpha / tests (Bonferroni), for n reference and m new samples. */
fun ksCritical(n: Long, m: Long, alpha: Double, tests: Int): Double =
    sqrt(-0.5 * ln(alpha / tests / 2.0)) * sqrt((n + m).toDouble() / (n.toDouble() * m.toDouble()))

/** The confidence of one logits row: the max softmax probability. Class = first argmax. */
fun maxSoftmax(logits: FloatArray): Double {
    var m = logits[0].toDouble()
    for (v in logits) if (v > m) m = v.toDouble()
    var s = 0.0
    for (v in logits) s += exp(v - m)
    return 1.0 / s
}

/** A feature drifted when its PSI exceeds psiDrift (0.25) or its KS its critical value. */
fun drifted(psi: Double, ks: Double?, critical: Double?, psiDrift: Double = 0.25): Boolean =
    psi > psiDrift || (ks != null && critical != null && ks > critical)
"""


def model_card_section(fingerprint: dict[str, Any] | None, reason: str | None) -> list[str]:
    """The model card's "Monitoring input drift on the device" section."""
    lines = ["", "## Monitoring input drift on the device", ""]
    if fingerprint is None:
        return lines + [f"No `{FINGERPRINT_FILE}` in this bundle: {reason}."]
    t = fingerprint["thresholds"]
    ref = fingerprint["reference"]
    feats = sum(len(i.get("features", [])) for i in fingerprint["inputs"])
    lines += [
        f"`{FINGERPRINT_FILE}` describes the inputs this model was calibrated and evaluated on "
        f"({ref.get('samples')} samples of {ref.get('data')}: {feats} input features, each a channel or a grid cell "
        "with a fixed-bin histogram) and its outputs on them (class prior, confidence histogram). Collect the "
        "inputs of a window of requests (a few hundred at least: with fewer, sampling noise alone moves the "
        "numbers), count each feature into the fingerprint's buckets, and compare:", "",
        "| number | no drift | moderate | drift | source |", "|---|---|---|---|---|",
        f"| PSI per feature, class prior, confidence | < {t['psi_moderate']} | {t['psi_moderate']} - {t['psi_drift']} "
        f"| > {t['psi_drift']} | credit-scoring rule of thumb (Siddiqi 2006) |",
        f"| binned KS per feature, confidence | <= critical | | > critical | two-sample KS at alpha {t['ks_alpha']}, "
        "Bonferroni over the features |", "",
        f"`{REFERENCE_FILE}` (numpy only) is the reference: `python {REFERENCE_FILE} {FINGERPRINT_FILE} "
        "new_inputs.npz --outputs outputs.npz`; on a desk, `compress drift bundle.zip new_inputs.npz` runs the model "
        "too. The definitions (features, buckets, PSI, KS) are in its docstring and in edgepack's docs/drift.md. "
        "The same computation in Kotlin (edgepack's tests compile it with kotlinc 1.3 and compare it with the "
        f"toolkit; still check it against `{REFERENCE_FILE}` on your own data):", "",
        "```kotlin", KOTLIN_SNIPPET.rstrip("\n"), "```"]
    return lines


def _member(zf: zipfile.ZipFile, prefix: str, name: str, bundle: Path) -> bytes:
    try:
        return zf.read(prefix + name)
    except KeyError:
        raise InputFileError(f"{bundle}: no {name} in the bundle") from None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_verified(bundle: Path, public_key: Path | None, folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Verify a bundle, then read its manifest, fingerprint and model (written into ``folder``).

    The members read after the verification are checked again against the verified
    checksums, so a bundle swapped in between is refused too.

    Raises:
        InputFileError: the bundle fails verification, or has no fingerprint.
    """
    from export.bundle_verify import verify_bundle
    from export.signing import DIGEST_FILE

    res = verify_bundle(bundle, public_key=public_key)
    if not res.ok:
        raise InputFileError(f"{bundle}: the bundle fails verification (compress verify): " + "; ".join(res.problems))
    with zipfile.ZipFile(bundle) as zf:
        manifests = [n for n in zf.namelist() if posixpath.basename(n) == "manifest.json"]
        prefix = manifests[0][: -len("manifest.json")]
        manifest_bytes = zf.read(manifests[0])
        digest = json.loads(_member(zf, prefix, DIGEST_FILE, bundle))
        manifest = json.loads(manifest_bytes)
        if FINGERPRINT_FILE not in manifest["files"]:
            raise InputFileError(f"{bundle}: no {FINGERPRINT_FILE} in the bundle (packaged by an older edgepack, or "
                                 "from a recipe without data): package the run again")
        fp_bytes = _member(zf, prefix, FINGERPRINT_FILE, bundle)
        model = folder / f"model.{manifest['format']}"
        model.write_bytes(_member(zf, prefix, manifest["model_file"], bundle))
    if (_sha(manifest_bytes) != digest["files"].get("manifest.json")
            or _sha(fp_bytes) != manifest["files"][FINGERPRINT_FILE]
            or _sha(model.read_bytes()) != manifest["files"][manifest["model_file"]]):
        raise InputFileError(f"{bundle}: the bundle changed while it was read: verify it again")
    try:
        fingerprint = json.loads(fp_bytes)
    except ValueError as e:
        raise InputFileError(f"{bundle}: {FINGERPRINT_FILE} is not JSON ({e})") from e
    if not isinstance(fingerprint, dict) or fingerprint.get("format_version") != 1:
        raise InputFileError(f"{bundle}: {FINGERPRINT_FILE} is not a version 1 fingerprint")
    return manifest, fingerprint, model


def read_new_inputs(path: Path, manifest: dict[str, Any]) -> list[np.ndarray]:
    """The arrays of an .npz matched to the bundle's model inputs (by name, or ``x`` for one input), checked."""
    from compress.intake.data import input_mismatches, read_npz
    from compress.intake.recipe import InputSpec

    if not path.is_file():
        raise InputFileError(f"{path}: inputs file not found")
    specs = []
    for i in manifest["inputs"]:
        shape = [int(d) for d in i["shape"]]
        if i.get("batch_axis") is not None:
            shape[i["batch_axis"]] = -1
        # a quantized input takes float values (the runtime quantizes them), as the fingerprint describes
        dtype = "float32" if i.get("quantization") else i["dtype"]
        specs.append(InputSpec(name=i["name"], shape=shape, dtype=dtype, batch_axis=i.get("batch_axis")))
    split = read_npz(path, specs)
    problems = input_mismatches(specs, list(split.x))
    if problems:
        wanted = ", ".join(f"{s.name} {tuple('N' if d == -1 else d for d in s.shape)} {s.dtype}" for s in specs)
        raise InputFileError(f"{path}: the arrays do not fit the bundle's model (it takes {wanted}): "
                             + "; ".join(problems))
    return list(split.x)


def drift_of_bundle(bundle: Path, inputs: Path, thresholds: dict[str, float] | None = None,
                    public_key: Path | None = None) -> Any:
    """Verify a bundle, run its model on new inputs and compare both with its fingerprint.

    Args:
        bundle: The bundle zip.
        inputs: The new inputs (.npz).
        thresholds: Fields of :class:`bench.drift.Thresholds` that replace the fingerprint's own.
        public_key: An Ed25519 public key PEM the bundle must be signed by.

    Returns:
        A :class:`bench.drift.DriftReport`.

    Raises:
        InputFileError: the bundle fails verification or has no fingerprint; the inputs are
            unreadable or do not fit the model.
    """
    from bench.drift import compare, thresholds_of
    from bench.runtime import open_model, predict

    with tempfile.TemporaryDirectory(prefix="edgepack-drift-") as tmp:
        manifest, fingerprint, model = open_verified(bundle, public_key, Path(tmp))
        xs = read_new_inputs(inputs, manifest)
        session = open_model(model)
        ys = predict(session, xs)
    by_name = dict(zip([o["name"] for o in session.outputs], ys))
    missing = [o["name"] for o in fingerprint["outputs"] if o["name"] not in by_name]
    outputs = None if missing else [by_name[o["name"]] for o in fingerprint["outputs"]]
    report = compare(fingerprint, xs, outputs, thresholds_of(fingerprint, thresholds))
    if missing:
        report.notes.append(f"the model has no output {', '.join(map(repr, missing))} the fingerprint describes: "
                            "only the inputs were compared")
    return report
