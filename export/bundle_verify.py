"""`compress verify`: check a bundle someone else may have made, without trusting it.

A bundle is untrusted input. Nothing is extracted: every check before the golden vectors
reads the zip's central directory or member bytes in memory, and the one file the runtime
needs on disk (the model) is streamed, while it is hashed, into a fresh temporary folder
under a name chosen here, never one taken from the zip. In order:

1. entry names: absolute, ``..``, ``//``, backslashes, drive letters, names that normalise
   differently, control characters, symlinks, duplicates (also by case) are refused;
2. declared sizes: a member over its limit, a compression ratio of a zip bomb, or a total
   over the limit is refused before it is read;
3. ``manifest.json``: its structure, and every path it names is a safe relative name;
4. checksums: each member against ``manifest.json`` and ``digest.json``, the overall
   digest, and the Ed25519 signature when a public key is given;
5. the model loads and reproduces the golden vectors.

A malformed bundle raises :class:`~compress.core.errors.InputFileError` (exit 2); a tampered one
returns its problems (exit 1).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import stat
import struct
import tempfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from compress.core.errors import InputFileError
from export.signing import DIGEST_FILE, DIGEST_SCHEME, overall_digest

MiB = 1 << 20
DEFAULT_MAX_MODEL_MB = 2048
MAX_SMALL_MEMBER = 16 * MiB  # manifest, golden vectors, labels, model card
MAX_ENTRIES = 64  # a bundle has six members
# deflate reaches ~1030:1 on zeros; a real model compresses < 10:1, JSON < 20:1
MAX_RATIO = 100
RATIO_FLOOR = MiB  # a tiny member may compress well without being a bomb
CHUNK = MiB
GOLDEN_DTYPES = "biuf"  # numpy kinds: bool, int, uint, float
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class VerifyResult:
    """What ``verify_bundle`` found.

    Args:
        problems: Tampering or unsafe content: any makes the bundle fail (exit 1).
        checked: Each check that passed, in words.
        notes: What the checks do not prove (an unsigned bundle, a signature not checked).
        signed_by: Fingerprint of the key whose signature was checked, None when none was.
        has_signature: ``digest.json`` carries a signature (checked or not).
    """

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signed_by: str | None = None
    has_signature: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def show(value: object, limit: int = 120) -> str:
    """``value`` for a message: control characters escaped (no terminal escapes), long values cut with a count."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


def unsafe_name(name: str, directory: bool = False) -> str | None:
    """Why ``name`` (a zip entry or a manifest path) could land outside a folder, or None when it is safe.

    Args:
        name: The name as stored.
        directory: The name is a folder entry (one trailing ``/`` allowed).
    """
    body = name[:-1] if directory and name.endswith("/") else name
    if not body:
        return "is empty"
    if _CONTROL.search(body):
        return "holds control characters"
    if "\\" in body:
        return "holds a backslash (a Windows path separator)"
    if body.startswith("/"):
        return "is an absolute path"
    if re.match(r"^[A-Za-z]:", body):
        return "starts with a drive letter"
    if "//" in body:
        return "holds '//' (an empty path part)"
    parts = body.split("/")
    if ".." in parts:
        return "holds '..' (escapes the bundle folder)"
    if "." in parts or "" in parts:
        return "holds '.' or an empty part"
    if posixpath.normpath(body) != body or unicodedata.normalize("NFC", body) != body:
        return "normalises to another name"
    return None


def _is_dir(info: zipfile.ZipInfo) -> bool:
    return info.filename.endswith("/")


def _entry_problems(infos: list[zipfile.ZipInfo]) -> list[str]:
    """Unsafe names, links, special files and duplicates, from the central directory alone."""
    problems = []
    seen: dict[str, str] = {}
    for info in infos:
        n = info.filename
        why = unsafe_name(n, directory=_is_dir(info))
        if why:
            problems.append(f"entry {show(n)} {why}: refusing the bundle")
        # Unix mode bits; whatever create_system claims, an extractor may honour them
        mode = info.external_attr >> 16
        if stat.S_IFMT(mode) == stat.S_IFLNK:
            problems.append(f"entry {show(n)} is a symbolic link: refusing the bundle")
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            problems.append(f"entry {show(n)} is a special file (mode {oct(mode)}): refusing the bundle")
        key = unicodedata.normalize("NFC", n).casefold()
        if key in seen:
            same = "twice" if seen[key] == n else f"twice by case ({show(seen[key])})"
            problems.append(f"entry {show(n)} appears {same}: a reader may take either copy; refusing the bundle")
        seen.setdefault(key, n)
    return problems


def _size_problems(infos: list[zipfile.ZipInfo], max_model: int) -> list[str]:
    """Members over the model limit, zip-bomb ratios and an oversize total, from declared sizes only."""
    problems = []
    for info in infos:
        if info.file_size > max_model:
            problems.append(f"entry {show(info.filename)} declares {info.file_size / MiB:.0f} MiB, over the limit of "
                            f"{max_model / MiB:.0f} MiB (--max-member-mb): refusing to read it")
        elif info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            problems.append(f"entry {show(info.filename)} declares {info.file_size / MiB:.0f} MiB from "
                            f"{info.compress_size / MiB:.2f} MiB compressed (ratio over {MAX_RATIO}:1, a zip bomb): "
                            "refusing to read it")
    total = sum(i.file_size for i in infos)
    if not problems and total > max_model + MAX_ENTRIES * MAX_SMALL_MEMBER:
        problems.append(f"the bundle declares {total / MiB:.0f} MiB in all, over the limit: refusing to read it")
    return problems


def _invalid(path: Path, why: str) -> InputFileError:
    return InputFileError(f"{path}: not a valid bundle: {why}")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, sink: IO[bytes] | None = None,
                 keep: bool = True) -> tuple[str, bytes]:
    """Hash a member while reading it in chunks; never more than its declared size.

    Args:
        sink: A file the bytes are copied into (the model, for the runtime).
        keep: Return the bytes (small members only).

    Returns:
        The sha256 hex digest and the bytes (empty when ``keep`` is False).
    """
    h = hashlib.sha256()
    buf = io.BytesIO() if keep else None
    read = 0
    with zf.open(info) as f:
        while chunk := f.read(CHUNK):
            read += len(chunk)
            if read > info.file_size:  # zipfile stops at the declared size; this is belt and braces
                raise zipfile.BadZipFile(f"{info.filename}: more data than its declared size")
            h.update(chunk)
            if sink is not None:
                sink.write(chunk)
            if buf is not None:
                buf.write(chunk)
    return h.hexdigest(), buf.getvalue() if buf is not None else b""


def _json(data: bytes, what: str, path: Path) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _invalid(path, f"{what} is not JSON ({show(str(e), 80)})") from e


def _check_manifest(m: Any, path: Path) -> list[str]:
    """Structure errors raise (exit 2); an unsafe path the manifest names is returned as a problem (exit 1)."""
    if not isinstance(m, dict):
        raise _invalid(path, f"manifest.json is a JSON {type(m).__name__}, not an object")
    need = {"schema_version": int, "model_file": str, "format": str, "files": dict, "golden_vectors": dict}
    for key, typ in need.items():
        if key not in m:
            raise _invalid(path, f"manifest.json has no {key!r}")
        if not isinstance(m[key], typ) or isinstance(m[key], bool):
            raise _invalid(path, f"manifest.json {key} must be a {typ.__name__} (got {type(m[key]).__name__})")
    if m["schema_version"] != 1:
        raise _invalid(path, f"manifest.json schema_version {show(m['schema_version'])} is not 1 "
                             "(made by another edgepack version?)")
    if m["format"] not in ("onnx", "tflite"):
        raise _invalid(path, f"manifest.json format must be onnx or tflite (got {show(m['format'])})")
    gv = m["golden_vectors"]
    if not isinstance(gv.get("file"), str):
        raise _invalid(path, "manifest.json golden_vectors.file must be a string")
    for name, digest in m["files"].items():
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise _invalid(path, f"manifest.json files[{show(name)}] must be a sha256 hex digest (got {show(digest, 80)})")
    post = m.get("postprocessing")
    labels = post.get("labels_file") if isinstance(post, dict) else None
    named = {"model_file": m["model_file"], "golden_vectors.file": gv["file"]}
    if labels is not None:
        if not isinstance(labels, str):
            raise _invalid(path, "manifest.json postprocessing.labels_file must be a string")
        named["postprocessing.labels_file"] = labels
    named.update({f"files[{show(n)}]": n for n in m["files"]})
    problems = []
    for where, name in named.items():
        why = unsafe_name(name)
        if why:
            problems.append(f"manifest.json {where} {show(name)} {why}: refusing the bundle")
    if not problems:
        for where, name in list(named.items())[:3]:
            if name not in m["files"]:
                problems.append(f"manifest.json {where} {show(name)} is not among its checksummed files")
    return problems


def _check_digest_doc(d: Any, path: Path) -> None:
    if not isinstance(d, dict) or d.get("scheme") != DIGEST_SCHEME:
        raise _invalid(path, f"{DIGEST_FILE} is not an {DIGEST_SCHEME} document")
    files, digest = d.get("files"), d.get("digest")
    if not isinstance(files, dict) or not all(isinstance(v, str) and _HEX64.match(v) for v in files.values()):
        raise _invalid(path, f"{DIGEST_FILE} files must map names to sha256 hex digests")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise _invalid(path, f"{DIGEST_FILE} digest must be a sha256 hex digest")


def verify_bundle(path: Path, public_key: Path | None = None,
                  max_member_mb: float = DEFAULT_MAX_MODEL_MB) -> VerifyResult:
    """Check a bundle: safe names and sizes, checksums, the signature, the model loads, golden vectors reproduce.

    Args:
        path: The bundle zip.
        public_key: An Ed25519 public key PEM: the bundle must carry a valid signature by it.
        max_member_mb: The largest model accepted (other members are limited to 16 MiB).

    Raises:
        InputFileError: the bundle or the key is missing or malformed (a bad zip or CRC, a manifest
            that is not JSON or lacks keys).
    """
    if not path.is_file():
        raise InputFileError(f"{path}: bundle not found")
    if not max_member_mb > 0:
        raise InputFileError(f"--max-member-mb must be > 0 (got {max_member_mb})")
    pub = None
    if public_key is not None:
        from export.signing import load_public_key

        pub = load_public_key(public_key)
    _check_directory_size(path, int(max_member_mb * MiB))
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise _invalid(path, f"not a zip file ({show(str(e), 80)})") from e
    with zf:
        try:
            return _verify_zip(zf, path, pub, int(max_member_mb * MiB))
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            # a bad CRC or a corrupt stream: the bundle is damaged, not a checksum mismatch
            raise _invalid(path, show(str(e), 160)) from e


def _check_directory_size(path: Path, max_model: int) -> None:
    """Refuse a zip too large, or whose directory lists too many entries, before ``ZipFile`` parses it all.

    ``ZipFile`` builds an object per entry on opening: a directory of millions of entries
    would take gigabytes before any of our checks ran.
    """
    size = path.stat().st_size
    if size > max_model + MAX_ENTRIES * MAX_SMALL_MEMBER:
        raise _invalid(path, f"{size / MiB:.0f} MiB, larger than any bundle under --max-member-mb")
    end_record = getattr(zipfile, "_EndRecData", None)  # private, stable since Python 2; skipped if it goes
    if end_record is None:
        return
    try:
        with open(path, "rb") as f:
            rec = end_record(f)
    except (OSError, struct.error) as e:
        raise _invalid(path, f"cannot read its directory ({show(str(e), 80)})") from e
    if rec and (rec[zipfile._ECD_ENTRIES_TOTAL] > MAX_ENTRIES or rec[zipfile._ECD_SIZE] > MAX_ENTRIES * 66_000):
        raise _invalid(path, f"its directory lists {rec[zipfile._ECD_ENTRIES_TOTAL]} entries "
                             f"(a bundle has a handful; at most {MAX_ENTRIES})")


def _verify_zip(zf: zipfile.ZipFile, path: Path, pub: Any, max_model: int) -> VerifyResult:
    res = VerifyResult()
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise _invalid(path, f"{len(infos)} entries (a bundle has a handful; at most {MAX_ENTRIES})")
    res.problems += _entry_problems(infos)
    if res.problems:
        return res
    for info in infos:
        if info.flag_bits & 0x1:
            raise _invalid(path, f"entry {show(info.filename)} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _invalid(path, f"entry {show(info.filename)} uses compression method {info.compress_type} "
                                 "(bundles are stored or deflated)")
    res.problems += _size_problems(infos, max_model)
    if res.problems:
        return res
    members = [i for i in infos if not _is_dir(i)]
    manifests = [i for i in members if posixpath.basename(i.filename) == "manifest.json"]
    if len(manifests) != 1:
        raise _invalid(path, f"not an edgepack bundle (expected one manifest.json, found {len(manifests)})")
    prefix = manifests[0].filename[: -len("manifest.json")]
    if manifests[0].file_size > MAX_SMALL_MEMBER:
        res.problems.append(f"manifest.json declares {manifests[0].file_size / MiB:.0f} MiB: refusing to read it")
        return res
    manifest_bytes = _read_member(zf, manifests[0])[1]
    manifest = _json(manifest_bytes, "manifest.json", path)
    res.problems += _check_manifest(manifest, path)
    if res.problems:
        return res
    rel = {i.filename[len(prefix):]: i for i in members if i.filename.startswith(prefix)}
    for i in members:
        if not i.filename.startswith(prefix):
            res.problems.append(f"{show(i.filename)}: outside the bundle folder {show(prefix)}")
    for name, info in rel.items():
        if name != manifest["model_file"] and info.file_size > MAX_SMALL_MEMBER:
            res.problems.append(f"{show(name)} declares {info.file_size / MiB:.0f} MiB, over the "
                                f"{MAX_SMALL_MEMBER // MiB} MiB limit of a bundle's small files: refusing to read it")
    if res.problems:
        return res
    digest_doc = None
    if DIGEST_FILE in rel:
        digest_doc = _json(_read_member(zf, rel[DIGEST_FILE])[1], DIGEST_FILE, path)
        _check_digest_doc(digest_doc, path)
    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as tmp:
        # the runtime needs a file: our own name, in our own fresh folder
        model_path = Path(tmp) / f"model.{manifest['format']}"
        sums, golden_bytes = {"manifest.json": hashlib.sha256(manifest_bytes).hexdigest()}, b""
        for name, info in rel.items():
            if name in (DIGEST_FILE, "manifest.json"):
                continue
            if name == manifest["model_file"]:
                with open(model_path, "wb") as sink:
                    sums[name] = _read_member(zf, info, sink=sink, keep=False)[0]
            else:
                sums[name], data = _read_member(zf, info)
                if name == manifest["golden_vectors"]["file"]:
                    golden_bytes = data
        _check_sums(manifest, digest_doc, sums, pub, res)
        if res.problems:
            return res
        _check_golden(model_path, _json(golden_bytes, "golden.json", path), path, res,
                      manifest["golden_vectors"].get("count"))
    return res


def _check_sums(manifest: dict[str, Any], digest_doc: Any, sums: dict[str, str], pub: Any, res: VerifyResult) -> None:
    """Compare the members' sha256 with the manifest and ``digest.json``; check the signature."""
    listed = manifest["files"]
    for name, want in listed.items():
        if name not in sums:
            res.problems.append(f"{show(name)}: listed in the manifest but missing from the bundle")
        elif sums[name] != want:
            res.problems.append(f"{show(name)}: sha256 mismatch (manifest {want[:12]}..., file {sums[name][:12]}...)")
        else:
            res.checked.append(f"{name}: sha256 ok")
    for name in sums:
        if name not in listed and name != "manifest.json":
            res.problems.append(f"{show(name)}: in the bundle but not in the manifest")
    if digest_doc is None:
        res.problems.append(f"no {DIGEST_FILE}: manifest.json is covered by no checksum (a bundle from an older "
                            "edgepack, or one stripped of it): package it again")
        return
    stated = digest_doc["files"]
    for name in sorted(set(stated) | set(sums)):
        if name not in sums:
            res.problems.append(f"{DIGEST_FILE}: {show(name)} is listed but missing from the bundle")
        elif name not in stated:
            res.problems.append(f"{DIGEST_FILE}: {show(name)} is in the bundle but not in the digest")
        elif stated[name] != sums[name]:
            res.problems.append(f"{show(name)}: sha256 mismatch ({DIGEST_FILE} {stated[name][:12]}..., "
                                f"file {sums[name][:12]}...)")
    if overall_digest(sums) != digest_doc["digest"]:
        res.problems.append(f"{DIGEST_FILE}: the overall digest does not match the bundle's files")
    elif not res.problems:
        res.checked.append(f"{DIGEST_FILE}: overall digest {digest_doc['digest'][:16]}... covers manifest.json "
                           f"and {len(sums) - 1} files")
    sig = digest_doc.get("signature")
    res.has_signature = sig is not None
    if pub is not None:
        from export.signing import check_signature, key_fingerprint

        wrong = check_signature(pub, digest_doc["digest"], sig)
        if wrong:
            res.problems.append(wrong)
        else:
            res.signed_by = key_fingerprint(pub)
            res.checked.append(f"signature: Ed25519 by key {res.signed_by[:16]}... over the overall digest")
    elif sig is not None:
        fp = sig.get("public_key_sha256") if isinstance(sig, dict) else None
        res.notes.append(f"the bundle is signed (key {show(str(fp)[:16])}...), but the signature was not checked: "
                         "pass --key PUBLIC_KEY.pem to check who made it")
    else:
        res.notes.append("unsigned: the checksums only prove the bundle is internally consistent (anyone who "
                         "changes a file can recompute them), not who made it; package with --sign and verify "
                         "with --key for that")


def _array(d: Any) -> np.ndarray:
    if not isinstance(d, dict) or not isinstance(d.get("data"), list) or not isinstance(d.get("shape"), list):
        raise ValueError("an array must be {shape: [...], dtype: ..., data: [...]}")
    dtype = np.dtype(str(d.get("dtype")))
    if dtype.kind not in GOLDEN_DTYPES:
        raise ValueError(f"dtype {show(str(dtype), 20)} is not numeric")
    return np.asarray(d["data"], dtype=dtype).reshape([int(s) for s in d["shape"]])


def _check_golden(model: Path, golden: Any, path: Path, res: VerifyResult, count: Any = None) -> None:
    """Run the model on each golden vector; a missing or short set of vectors is a problem, not a pass."""
    # onnxruntime >= 1.32 on Linux writes telemetry files on import ($TMPDIR/.ses and
    # ~/.cache/Microsoft/DeveloperTools/): verify promises to write nowhere but its own folder
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    from bench.runtime import open_model

    try:
        tol = golden["tolerance"]
        atol, rtol = float(tol["atol"]), float(tol["rtol"])
        vectors = golden["vectors"]
        if not isinstance(vectors, list) or not all(isinstance(v, dict) for v in vectors):
            raise TypeError("vectors must be a list of objects")
        if not (np.isfinite(atol) and np.isfinite(rtol) and atol >= 0 and rtol >= 0):
            raise ValueError(f"tolerance must be finite and >= 0 (atol {atol}, rtol {rtol})")
    except (KeyError, TypeError, ValueError) as e:
        raise _invalid(path, f"golden.json: {show(str(e), 120)}") from e
    if not vectors:
        res.problems.append("golden.json holds no vectors: nothing would check the model")
        return
    if count is not None and count != len(vectors):
        res.problems.append(f"golden.json holds {len(vectors)} vectors, the manifest says {show(count, 20)}")
    try:
        session = open_model(model)
    except Exception as e:  # noqa: BLE001  (any runtime error: the model is what is wrong)
        first = (str(e).splitlines() or [""])[0]
        res.problems.append(f"{model.name}: the runtime cannot load the model ({type(e).__name__}: {show(first)})")
        return
    for i, vec in enumerate(vectors):
        try:
            xs = [_array(vec["inputs"][s["name"]]) for s in session.inputs]
            wants = [_array(vec["outputs"][s["name"]]) for s in session.outputs]
        except KeyError as e:
            res.problems.append(f"golden vector {i}: no tensor {show(str(e))} the model names")
            continue
        except (TypeError, ValueError) as e:
            raise _invalid(path, f"golden.json vector {i}: {show(str(e))}") from e
        try:
            ys = session.run(xs)
        except Exception as e:  # noqa: BLE001  (wrong shapes or types for this model)
            res.problems.append(f"golden vector {i}: the model cannot run it ({type(e).__name__}: "
                                f"{show((str(e).splitlines() or [''])[0])})")
            continue
        for s, y, want in zip(session.outputs, ys, wants):
            y64 = np.asarray(y, dtype=np.float64)
            diff = float(np.abs(y64 - want).max()) if y64.shape == want.shape else float("inf")
            if y64.shape != want.shape or not np.allclose(y64, want, atol=atol, rtol=rtol):
                res.problems.append(f"golden vector {i}, output {s['name']}: max abs diff {diff:.3g} over tolerance "
                                    f"(atol {atol:.3g}, rtol {rtol:g})")
            elif golden.get("top1_must_match") and y.ndim == 2 and int(y.argmax()) != int(want.argmax()):
                res.problems.append(f"golden vector {i}: predicted class {int(y.argmax())}, expected {int(want.argmax())}")
            else:
                res.checked.append(f"golden vector {i} output {s['name']}: max abs diff {diff:.2e}")


def bundle_bytes(files: dict[str, bytes]) -> bytes:
    """A zip of ``files`` in memory (tests build tampered bundles with it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    return buf.getvalue()
