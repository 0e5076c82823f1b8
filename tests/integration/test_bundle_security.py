"""Malicious bundles: each must be refused by `compress verify` with the right exit code, writing nothing.

Exit 1: tampered or unsafe (a checksum, digest or signature mismatch; an unsafe name or size).
Exit 2: not a valid bundle (a bad zip or CRC, a malformed manifest) or a bad key file. Never a traceback.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.cli import app
from export.bundle_verify import verify_bundle
from export.signing import DIGEST_FILE, load_private_key
from tests.integration.test_bundle import quickstart_bundle, PREFIX, compress, quickstart_run, reseal

MODEL = PREFIX + "model.onnx"
MANIFEST = PREFIX + "manifest.json"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("keys")
    res = compress("keygen", str(base / "signer"))
    assert res.returncode == 0, res.stderr
    return base / "signer", base / "signer.pub"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quickstart_bundle(tmp_path_factory, "sec", "unsigned.zip")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    run = quickstart_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("sec") / "signed.zip"
    res = compress("package", str(run), "--artifact", "onnx-fp32", "--platform", "android", "-o", str(out),
                   "--sign", str(keys[0]))
    assert res.returncode == 0, res.stderr
    assert "signed by key" in res.stdout
    return out


def entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path: Path, files: dict[str, bytes], extra: list[tuple[zipfile.ZipInfo, bytes]] = (),
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for n, d in files.items():
            z.writestr(n, d)
        for info, d in extra:
            z.writestr(info, d)
    return path


def verify_cli(*args: str) -> tuple[int, str]:
    """`compress verify` in-process; the exit code and everything printed."""
    res = CliRunner().invoke(app, ["verify", *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def swapped_model(files: dict[str, bytes]) -> None:
    """Swap in another model (here: the same graph with a changed docstring, so the golden vectors pass)."""
    import onnx

    m = onnx.load_from_string(files[MODEL])
    m.doc_string = "backdoored"
    files[MODEL] = m.SerializeToString()


# --------------------------------------------------------------------------- names, links, duplicates

EVIL_NAMES = [
    "/tmp/edgepack-evil-abs.txt",
    PREFIX + "/tmp/edgepack-evil-dslash.txt",  # assets/X//abs/path
    "../evil.txt",
    PREFIX + "../../evil.txt",
    "C:/evil.txt",
    PREFIX + "..\\..\\evil.txt",
    PREFIX + "./model.onnx",
    PREFIX + "cafe\u0301.txt",  # not NFC: a macOS extractor writes another name
    PREFIX + "\x1b]0;pwned\x07.txt",  # a terminal escape in a name
]


@pytest.mark.parametrize("name", EVIL_NAMES)
def test_unsafe_entry_names_are_refused(bundle: Path, tmp_path: Path, name: str) -> None:
    files = entries(bundle)
    files[name] = b"evil"
    bad = write_zip(tmp_path / "bad.zip", files)
    code, out = verify_cli(str(bad))
    assert code == 1 and "refusing the bundle" in out and "\x1b" not in out and "Traceback" not in out
    assert not Path("/tmp/edgepack-evil-abs.txt").exists() and not Path("/tmp/edgepack-evil-dslash.txt").exists()


def test_symlink_entry_is_refused(bundle: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo(PREFIX + "labels.txt.link")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    bad = write_zip(tmp_path / "bad.zip", entries(bundle), [(link, b"/etc/passwd")])
    code, out = verify_cli(str(bad))
    assert code == 1 and "is a symbolic link" in out


def test_duplicate_entries_are_refused(bundle: Path, tmp_path: Path) -> None:
    files = entries(bundle)
    good = files.pop(MODEL)
    tampered = bytearray(good)
    tampered[len(tampered) // 2] ^= 0xFF
    # first copy tampered, last copy good: a reader taking the last copy sees a clean bundle
    first = zipfile.ZipInfo(MODEL)
    with pytest.warns(UserWarning, match="Duplicate name"):
        bad = write_zip(tmp_path / "bad.zip", files, [(first, bytes(tampered)), (zipfile.ZipInfo(MODEL), good)])
    with zipfile.ZipFile(bad) as z:
        assert z.read(MODEL) == good  # what the old verify checked
    code, out = verify_cli(str(bad))
    assert code == 1 and "appears twice" in out
    # the same name differing only by case collides on macOS and Windows
    case = write_zip(tmp_path / "case.zip", dict(entries(bundle), **{PREFIX + "MODEL.onnx": bytes(tampered)}))
    code, out = verify_cli(str(case))
    assert code == 1 and "twice by case" in out


# --------------------------------------------------------------------------- sizes


def _declare_size(path: Path, name: str, size: int) -> None:
    """Patch the uncompressed size a zip declares for ``name`` (local header and central directory)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    struct.pack_into("<I", raw, info.header_offset + 22, size)
    pos = raw.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46 : pos + 46 + name_len].decode() == name:
            struct.pack_into("<I", raw, pos + 24, size)
        pos = raw.find(b"PK\x01\x02", pos + 4)
    path.write_bytes(bytes(raw))


def test_oversize_member_is_refused_before_reading(bundle: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    files = entries(bundle)
    files[MODEL] = os.urandom(1_100_000)  # does not compress: the zip stays ~1.1 MB
    bad = write_zip(tmp_path / "big.zip", files)
    _declare_size(bad, MODEL, int(1.1 * (1 << 30)))
    with zipfile.ZipFile(bad) as z:
        assert z.getinfo(MODEL).file_size == int(1.1 * (1 << 30)) and bad.stat().st_size < 1_300_000
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: object, *a: object, **k: object) -> object:
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else str(name))
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    tracemalloc.start()
    t0 = time.perf_counter()
    res = verify_bundle(bad)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"1.1 GiB declared in a {bad.stat().st_size / 1e6:.2f} MB zip: refused in {seconds * 1000:.1f} ms, "
          f"peak Python allocations {peak / 1e6:.2f} MB")
    assert not res.ok and "zip bomb" in res.problems[0]
    assert opened == [] and peak < 20e6  # nothing read, no member decompressed
    monkeypatch.undo()
    code, out = verify_cli(str(bad), "--max-member-mb", "1024")
    assert code == 1 and "over the limit of 1024 MiB" in out


def test_zip_bomb_and_small_member_limits(bundle: Path, tmp_path: Path) -> None:
    files = entries(bundle)
    files[PREFIX + "labels.txt"] = bytes(40 << 20)  # 40 MiB of zeros deflate to ~40 kB
    bomb = write_zip(tmp_path / "bomb.zip", files)
    assert bomb.stat().st_size < 1 << 20
    code, out = verify_cli(str(bomb))
    assert code == 1 and "zip bomb" in out
    # stored (no ratio): over the 16 MiB limit of a bundle's small files
    files[PREFIX + "labels.txt"] = bytes(17 << 20)
    big = write_zip(tmp_path / "big.zip", files, compression=zipfile.ZIP_STORED)
    code, out = verify_cli(str(big))
    assert code == 1 and "16 MiB limit" in out


def test_a_directory_of_many_entries_is_refused_before_parsing(tmp_path: Path) -> None:
    many = write_zip(tmp_path / "many.zip", {f"{PREFIX}{i}": b"" for i in range(5000)})
    code, out = verify_cli(str(many))
    assert code == 2 and "its directory lists 5000 entries" in out


# --------------------------------------------------------------------------- manifest paths and coverage


@pytest.mark.parametrize("field", ["model_file", "labels_file"])
@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_manifest_paths_that_escape_are_refused(bundle: Path, tmp_path: Path, field: str, where: str) -> None:
    evil = tmp_path / "evil" / "pwned.onnx"
    name = str(evil) if where == "absolute" else "../../../evil/pwned.onnx"
    files = entries(bundle)
    m = json.loads(files[MANIFEST])
    old = m["model_file"] if field == "model_file" else m["postprocessing"]["labels_file"]
    if field == "model_file":
        m["model_file"] = name
    else:
        m["postprocessing"]["labels_file"] = name
    m["files"][name] = m["files"].pop(old)
    files[MANIFEST] = json.dumps(m).encode()
    code, out = verify_cli(str(write_zip(tmp_path / "bad.zip", files)))
    assert code == 1 and "manifest.json" in out and "refusing the bundle" in out
    assert not evil.exists() and not evil.parent.exists()


def test_manifest_is_covered_by_the_digest(bundle: Path, tmp_path: Path) -> None:
    files = entries(bundle)
    m = json.loads(files[MANIFEST])
    m["metrics"]["accuracy"] = 0.999  # a better-looking manifest, files untouched
    files[MANIFEST] = json.dumps(m).encode()
    code, out = verify_cli(str(write_zip(tmp_path / "bad.zip", files)))
    assert code == 1 and "manifest.json: sha256 mismatch (digest.json" in out
    files.pop(PREFIX + DIGEST_FILE)  # stripping the digest is no way round it
    code, out = verify_cli(str(write_zip(tmp_path / "stripped.zip", files)))
    assert code == 1 and "covered by no checksum" in out


def test_extra_member_with_markup_in_its_name(bundle: Path, tmp_path: Path) -> None:
    files = entries(bundle)
    files[PREFIX + "[/][link=x.html]x[blink]"] = b"x"
    code, out = verify_cli(str(write_zip(tmp_path / "bad.zip", files)))
    assert code == 1 and "[/][link=x.html]x[blink]: in the bundle but not in the manifest" in out


# --------------------------------------------------------------------------- swapped model, signatures


def test_swapped_model_unsigned_is_consistent_but_says_so(bundle: Path, tmp_path: Path) -> None:
    files = entries(bundle)
    swapped_model(files)
    reseal(files)
    code, out = verify_cli(str(write_zip(tmp_path / "swapped.zip", files)))
    # without a key nothing can tell this from the real bundle, and the output says so plainly
    assert code == 0 and "unsigned: the checksums only prove the bundle is internally consistent" in out
    assert "verified (unsigned: internal consistency only)" in out


def test_golden_vectors_removed_is_not_a_pass(bundle: Path, tmp_path: Path) -> None:
    files = entries(bundle)
    g = json.loads(files[PREFIX + "golden.json"])
    g["vectors"] = []
    files[PREFIX + "golden.json"] = json.dumps(g).encode()
    reseal(files)
    code, out = verify_cli(str(write_zip(tmp_path / "empty.zip", files)))
    assert code == 1 and "holds no vectors" in out


def test_signed_bundle_verifies_with_its_key(signed: Path, keys: tuple[Path, Path]) -> None:
    code, out = verify_cli(str(signed), "--key", str(keys[1]))
    assert code == 0 and "signature: Ed25519 by key" in out and "verified (signed by key" in out
    code, out = verify_cli(str(signed))
    assert code == 0 and "signature was not checked" in out
    # what an app does, following docs/security.md literally: no edgepack code
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    files = entries(signed)
    d = json.loads(files[PREFIX + "digest.json"])
    statement = ""
    for name in sorted(d["files"], key=lambda n: n.encode()):
        digest = hashlib.sha256(files[PREFIX + name]).hexdigest()
        assert digest == d["files"][name]
        statement += f"{digest}  {name}\n"
    assert hashlib.sha256(statement.encode()).hexdigest() == d["digest"]
    raw = load_pem_public_key(keys[1].read_bytes()).public_bytes(Encoding.Raw, PublicFormat.Raw)
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(d["signature"]["value"]),
                                                   f"edgepack-bundle/1 sha256:{d['digest']}".encode("ascii"))


def test_swapped_model_signed_fails(signed: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    files = entries(signed)
    old_signature = json.loads(files[PREFIX + DIGEST_FILE])["signature"]
    swapped_model(files)
    reseal(files)  # the attacker has no key: the resealed digest is unsigned
    code, out = verify_cli(str(write_zip(tmp_path / "unsigned.zip", files)), "--key", str(keys[1]))
    assert code == 1 and "not signed" in out
    d = json.loads(files[PREFIX + DIGEST_FILE])
    d["signature"] = old_signature  # or keeps the old signature
    files[PREFIX + DIGEST_FILE] = json.dumps(d).encode()
    code, out = verify_cli(str(write_zip(tmp_path / "old-sig.zip", files)), "--key", str(keys[1]))
    assert code == 1 and "signature does not match" in out


def test_bad_signature_and_wrong_key(signed: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    files = entries(signed)
    d = json.loads(files[PREFIX + DIGEST_FILE])
    raw = bytearray(base64.b64decode(d["signature"]["value"]))
    raw[0] ^= 1
    d["signature"]["value"] = base64.b64encode(bytes(raw)).decode()
    files[PREFIX + DIGEST_FILE] = json.dumps(d).encode()
    code, out = verify_cli(str(write_zip(tmp_path / "bad-sig.zip", files)), "--key", str(keys[1]))
    assert code == 1 and "signature does not match" in out
    other = tmp_path / "other"
    made = compress("keygen", str(other))
    assert made.returncode == 0 and "raw public key for the app (base64, 32 bytes)" in made.stdout
    code, out = verify_cli(str(signed), "--key", str(other) + ".pub")
    assert code == 1 and "signed by another key" in out
    # re-signed by the attacker's own key: still not the key the app trusts
    files = entries(signed)
    swapped_model(files)
    reseal(files, key=load_private_key(other))
    code, out = verify_cli(str(write_zip(tmp_path / "resigned.zip", files)), "--key", str(keys[1]))
    assert code == 1 and "signed by another key" in out


def test_key_files(keys: tuple[Path, Path], bundle: Path, tmp_path: Path) -> None:
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    res = compress("keygen", str(keys[0]))
    assert res.returncode == 2 and "refusing to overwrite" in res.stderr
    code, out = verify_cli(str(bundle), "--key", str(keys[0]))
    assert code == 2 and "that is the private key" in out
    res = compress("package", str(tmp_path / "no-run"), "--artifact", "onnx-fp32", "-o", str(tmp_path / "b.zip"),
                   "--sign", str(keys[1]))
    assert res.returncode == 2 and "not a PEM private key" in res.stderr and not (tmp_path / "b.zip").exists()


# --------------------------------------------------------------------------- malformed bundles: exit 2


def test_bad_crc_is_not_a_valid_bundle(bundle: Path, tmp_path: Path) -> None:
    bad = write_zip(tmp_path / "crc.zip", entries(bundle), compression=zipfile.ZIP_STORED)
    raw = bytearray(bad.read_bytes())
    labels = entries(bundle)[PREFIX + "labels.txt"]
    at = raw.find(labels)
    raw[at] ^= 0x01  # the stored bytes change, the CRC in the header does not
    bad.write_bytes(bytes(raw))
    code, out = verify_cli(str(bad))
    assert code == 2 and "not a valid bundle" in out and "CRC" in out and "Traceback" not in out


@pytest.mark.parametrize("manifest, says", [
    (b"{not json", "manifest.json is not JSON"),
    (b"[1, 2]", "is a JSON list, not an object"),
    (b'{"schema_version": 1}', "has no 'model_file'"),
    (b'{"schema_version": 1, "model_file": "model.onnx", "format": "onnx", "files": [], "golden_vectors": {}}',
     "files must be a dict"),
    (json.dumps({"schema_version": 1, "model_file": "model.onnx", "format": "x" * 100_000, "files": {},
                 "golden_vectors": {"file": "golden.json"}}).encode(), "more characters"),
])
def test_malformed_manifest_is_not_a_valid_bundle(bundle: Path, tmp_path: Path, manifest: bytes, says: str) -> None:
    files = entries(bundle)
    files[MANIFEST] = manifest
    code, out = verify_cli(str(write_zip(tmp_path / "bad.zip", files)))
    assert code == 2 and "not a valid bundle" in out and says in out
    assert len(out) < 1000  # a 100 kB value is cut, not repeated


# --------------------------------------------------------------------------- nothing written outside its temp folder


def _snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``; a file's size and mtime (a folder's mtime moves when verify's own temp folder goes)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in root.rglob("*")}


def test_verify_writes_nothing_outside_its_temp_folder(bundle: Path, tmp_path: Path) -> None:
    work, tmpdir, home = tmp_path / "cwd", tmp_path / "tmpdir", tmp_path / "home"
    for d in (work, tmpdir, home):
        d.mkdir()
    evil = tmp_path / "evil" / "pwned.onnx"
    files = entries(bundle)
    m = json.loads(files[MANIFEST])
    m["files"][str(evil)] = m["files"].pop("model.onnx")
    m["model_file"] = str(evil)
    files[PREFIX + str(evil).lstrip("/")] = files.pop(MODEL)  # the model under its evil name too
    files[MANIFEST] = json.dumps(m).encode()
    bad_manifest = write_zip(tmp_path / "evil-manifest.zip", files)
    files = entries(bundle)
    files[PREFIX + "/" + str(tmp_path / "dslash.txt").lstrip("/")] = b"evil"  # assets/X//abs/path
    bad_entry = write_zip(tmp_path / "evil-entry.zip", files)
    env = dict(os.environ, TMPDIR=str(tmpdir), HOME=str(home))
    env.pop("ORT_DISABLE_TELEMETRY", None)  # verify itself must keep onnxruntime from writing its telemetry files
    before = _snapshot(tmp_path)
    # two evil bundles, then a good one that writes its model to a temp file and runs it
    for z, code in ((bad_manifest, 1), (bad_entry, 1), (bundle, 0)):
        res = compress("verify", str(z), cwd=work, env=env)
        assert res.returncode == code, res.stdout + res.stderr
    assert not evil.exists() and not evil.parent.exists() and not (tmp_path / "dslash.txt").exists()
    # cwd, the bundles' folder, TMPDIR, HOME (~/.cache): nothing new, nothing changed
    assert _snapshot(tmp_path) == before
    assert list(tmpdir.iterdir()) == [] and list(work.iterdir()) == [] and list(home.iterdir()) == []
