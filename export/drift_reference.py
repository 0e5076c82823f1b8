"""drift_check.py: the reference drift check an app team can copy (numpy only, one file).

It reads a bundle's ``fingerprint.json`` and new inputs (and, optionally, the model's outputs on
them), and computes the same numbers as ``compress drift`` (edgepack's ``bench/drift.py``, held
equal to 1e-6 by a test) from the definitions alone: this file imports nothing of edgepack.

Usage::

    python drift_check.py fingerprint.json new_inputs.npz [--outputs outputs.npz] [--json]

``new_inputs.npz`` holds one array per model input, named as the model names it (or ``x`` for a
single input); ``outputs.npz`` one array per output, by name. Exit 0 no drift, 1 drift, 2 bad input.

The definitions (docs/drift.md has the why):

- Features of a float input (batch axis first): channel axis 1, or the last for a 4-d NHWC input.
  ``channel c``: all values of channel c. ``cell``: the per-sample float64 mean of channel c over a
  grid cell; the grid is every element when ``C * prod(spatial) <= 256``, else ``g = min(S, 4)``
  segments per spatial axis of size S, cut at ``floor(j * S / g)``.
- Buckets of a feature with edges e[0..B]: 0 if x < e[0]; B+1 if x > e[B]; else
  ``min(k, B)`` where k counts the edges <= x. Inputs of kind ``tokens``: the counts of each sketched
  token, then of every other value.
- Classification outputs: class = argmax (first on ties); score = ``1 / sum(exp(x - max x))``
  (logits) or ``max x`` (probabilities), bucketed on the stored edges.
- PSI = sum((a - e) * ln(a / e)), shares floored at ``rules.psi_epsilon``.
- KS = max |cumulative reference share - cumulative new share| over all buckets but the last.
- KS critical = sqrt(-ln(alpha / m / 2) / 2) * sqrt((n + n') / (n n')), m = number of KS tests,
  n and n' the reference and new sample counts.
- drift: PSI > psi_drift, or KS > its critical value. Verdict: drift if anything drifted.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np

FORMAT_VERSION = 1


def buckets_of(values, edges):
    """Bucket of each value: 0 underflow, 1..B inner bins, B+1 overflow."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    e = np.asarray(edges, dtype=np.float64)
    inner = len(e) - 1
    k = np.searchsorted(e, v, side="right")
    k = np.where(k > inner, inner, k)
    k = np.where(v < e[0], 0, k)
    k = np.where(v > e[inner], inner + 1, k)
    return np.bincount(k, minlength=inner + 2)


def tokens_of(values, tokens):
    v = np.asarray(values).reshape(-1).astype(np.int64)
    counts = [int((v == int(t)).sum()) for t in tokens]
    counts.append(int(v.size) - sum(counts))
    return np.asarray(counts)


def features_of(x, layout):
    """Values of each feature of a batch-first float array, in the fingerprint's order."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return [x]
    axis = x.ndim - 1 if (x.ndim == 4 and layout == "NHWC") else 1
    x = np.moveaxis(x, axis, 1)
    n, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    out = [x[:, c].reshape(-1) for c in range(channels)]
    if not spatial:
        return out
    size = 1
    for s in spatial:
        size *= s
    grid = list(spatial) if channels * size <= 256 else [min(s, 4) for s in spatial]
    cuts = [[(j * s) // g for j in range(g + 1)] for s, g in zip(spatial, grid)]
    for c in range(channels):
        for cell in np.ndindex(*grid):
            index = (slice(None), c) + tuple(slice(cuts[d][i], cuts[d][i + 1]) for d, i in enumerate(cell))
            out.append(x[index].reshape(n, -1).mean(axis=1))
    return out


def psi_parts(ref_counts, new_counts, eps):
    r = np.asarray(ref_counts, dtype=np.float64)
    w = np.asarray(new_counts, dtype=np.float64)
    e = np.maximum(r / r.sum(), eps)
    a = np.maximum(w / w.sum(), eps)
    return (a - e) * np.log(a / e)


def ks_of(ref_counts, new_counts):
    r = np.asarray(ref_counts, dtype=np.float64)
    w = np.asarray(new_counts, dtype=np.float64)
    return float(np.max(np.abs(np.cumsum(r / r.sum())[:-1] - np.cumsum(w / w.sum())[:-1])))


def check(fingerprint, inputs, outputs=None, psi_drift=None, ks_alpha=None):
    """Compare new data with a fingerprint.

    Args:
        fingerprint: The parsed fingerprint.json.
        inputs: {input name: array} (samples along the input's batch axis).
        outputs: {output name: array} of the model's outputs on ``inputs``, or None.
        psi_drift: PSI above which a feature drifted (default: the fingerprint's).
        ks_alpha: The KS test's level before the Bonferroni correction (default: the fingerprint's).

    Returns:
        {"verdict": "drift" | "no drift", "checks": [{side, tensor, name, psi, ks, ks_critical, status}]}
    """
    if fingerprint.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"fingerprint format_version {fingerprint.get('format_version')} is not {FORMAT_VERSION}")
    t = fingerprint["thresholds"]
    psi_drift = t["psi_drift"] if psi_drift is None else psi_drift
    ks_alpha = t["ks_alpha"] if ks_alpha is None else ks_alpha
    eps = fingerprint["rules"]["psi_epsilon"]
    rows = []  # (side, tensor, name, reference counts, new counts, reference samples, ordered)
    n_new = None
    for fin in fingerprint["inputs"]:
        if fin["kind"] == "skipped":
            continue
        if fin["name"] not in inputs:
            raise ValueError(f"no array for input {fin['name']!r}")
        x = np.moveaxis(np.asarray(inputs[fin["name"]]), fin["batch_axis"] or 0, 0)
        if list(x.shape[1:]) != list(fin["sample_shape"]):
            raise ValueError(f"input {fin['name']!r}: samples of shape {list(x.shape[1:])}, "
                             f"the fingerprint's are {fin['sample_shape']}")
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise ValueError(f"input {fin['name']!r} holds NaN or infinite values")
        n_new = n_new or x.shape[0]
        if fin["kind"] == "tokens":
            f = fin["features"][0]
            rows.append(("input", fin["name"], f["name"], f["counts"], tokens_of(x, f["tokens"]), fin["samples"], False))
            continue
        for f, values in zip(fin["features"], features_of(x, fin.get("layout"))):
            rows.append(("input", fin["name"], f["name"], f["counts"], buckets_of(values, f["edges"]),
                         fin["samples"], True))
    for fout in fingerprint["outputs"] if outputs is not None else []:
        y = np.asarray(outputs[fout["name"]])
        if fout["kind"] == "classification":
            prior = np.bincount(np.argmax(y, axis=1), minlength=fout["classes"])
            rows.append(("output", fout["name"], "class prior", fout["class_prior"]["counts"], prior, fout["samples"],
                         False))
            s = fout["score"]
            y64 = y.astype(np.float64)
            if s["is"] == "max_softmax":
                score = 1.0 / np.exp(y64 - y64.max(axis=1, keepdims=True)).sum(axis=1)
            else:
                score = y64.max(axis=1)
            rows.append(("output", fout["name"], "score", s["counts"], buckets_of(score, s["edges"]), fout["samples"],
                         True))
        else:
            f = fout["features"][0]
            rows.append(("output", fout["name"], f["name"], f["counts"], buckets_of(y, f["edges"]), fout["samples"], True))
    tests = max(sum(1 for r in rows if r[6]), 1)
    c_alpha = math.sqrt(-0.5 * math.log(ks_alpha / tests / 2.0))
    checks = []
    for side, tensor, name, ref, new, n_ref, ordered in rows:
        psi = float(np.sum(psi_parts(ref, new, eps)))
        ks = ks_of(ref, new) if ordered else None
        crit = c_alpha * math.sqrt((n_ref + n_new) / (n_ref * n_new)) if ordered else None
        drifted = psi > psi_drift or (ks is not None and ks > crit)
        checks.append({"side": side, "tensor": tensor, "name": name, "psi": psi, "ks": ks, "ks_critical": crit,
                       "status": "drift" if drifted else "ok"})
    verdict = "drift" if any(c["status"] == "drift" for c in checks) else "no drift"
    return {"verdict": verdict, "checks": checks}


def _load_npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    as_json = "--json" in argv
    out_path = None
    if "--outputs" in argv:
        i = argv.index("--outputs")
        out_path = argv[i + 1] if i + 1 < len(argv) else None
        args = [a for a in args if a != out_path]
    if len(args) != 2:
        print(__doc__.split("Usage::")[1].split("``new_inputs")[0].strip(), file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            fingerprint = json.load(f)
        inputs = _load_npz(args[1])
        names = [i["name"] for i in fingerprint["inputs"]]
        if len(names) == 1 and names[0] not in inputs and "x" in inputs:
            inputs = {names[0]: inputs["x"]}
        result = check(fingerprint, inputs, _load_npz(out_path) if out_path else None)
    except (OSError, ValueError, KeyError) as e:
        print(f"drift_check: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for c in result["checks"]:
            if c["status"] == "drift":
                ks = "" if c["ks"] is None else f", KS {c['ks']:.3f} (critical {c['ks_critical']:.3f})"
                print(f"moved: {c['side']} {c['tensor']!r} {c['name']}: PSI {c['psi']:.3f}{ks}")
        print(result["verdict"])
    return 1 if result["verdict"] == "drift" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
