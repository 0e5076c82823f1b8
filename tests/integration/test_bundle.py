"""`compress package` then `compress verify`, and every way a bundle can be broken."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from export.bundle import bundle_bytes, verify_bundle
from export.signing import DIGEST_FILE, digest_document
from tests.conftest import ROOT

PREFIX = "assets/digits-quickstart/"
FEW_RUNS = ("--set", "bench.runs=20", "--set", "bench.warmup=2", "--set", "bench.repeats=1")


def compress(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env=env)


def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quickstart run per test session, shared by the bundle test modules (they only read it)."""
    out = tmp_path_factory.getbasetemp() / "bundle-quickstart-run"
    if not (out / "report.json").is_file():
        # one timing process per artifact (the readers look at files and the trade-off, never at a latency)
        res = compress(str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out), *FEW_RUNS, "-q")
        assert res.returncode == 0, res.stderr
    return out


def quickstart_bundle(tmp_path_factory: pytest.TempPathFactory, folder: str, name: str, *extra: str) -> Path:
    """The shared quickstart run's onnx-fp32 packaged for Android into ``folder/name`` (``extra``: more options)."""
    run = quickstart_run(tmp_path_factory)
    out = tmp_path_factory.mktemp(folder) / name
    res = compress("package", str(run), "--artifact", "onnx-fp32", "--platform", "android", "-o", str(out), *extra)
    assert res.returncode == 0, res.stderr
    return out


def reseal(files: dict[str, bytes], prefix: str = PREFIX, key: Any = None) -> None:
    """Recompute the manifest's checksums and digest.json after a change: what an attacker without the key can do."""
    m = json.loads(files[prefix + "manifest.json"])
    m["files"] = {n: hashlib.sha256(files[prefix + n]).hexdigest() for n in m["files"]}
    files[prefix + "manifest.json"] = json.dumps(m, indent=2).encode()
    members = {n[len(prefix):]: d for n, d in files.items() if n.startswith(prefix) and not n.endswith(DIGEST_FILE)}
    files[prefix + DIGEST_FILE] = digest_document(members, key)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quickstart_run(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(run_dir: Path) -> Path:
    out = run_dir.parent / "android.zip"
    res = compress("package", str(run_dir), "--artifact", "onnx-fp32", "--platform", "android", "-o", str(out))
    assert res.returncode == 0, res.stderr
    return out


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def test_bundle_contents(bundle: Path) -> None:
    files = _entries(bundle)
    prefix = "assets/digits-quickstart/"
    assert set(files) == {prefix + n for n in ("model.onnx", "labels.txt", "golden.json", "MODEL_CARD.md", "manifest.json",
                                               "digest.json", "fingerprint.json", "drift_check.py")}
    m = json.loads(files[prefix + "manifest.json"])
    assert m["format"] == "onnx" and m["inputs"][0]["shape"][1:] == [1, 8, 8] and m["inputs"][0]["dtype"] == "float32"
    assert m["postprocessing"]["labels_file"] == "labels.txt" and m["preprocessing"]["layout"] == "NCHW"
    assert m["provenance"]["recipe_hash"] and m["provenance"]["lineage"][0]["artifact"] == "onnx-fp32"
    assert set(m["files"]) == {"model.onnx", "labels.txt", "golden.json", "MODEL_CARD.md", "fingerprint.json",
                               "drift_check.py"}
    card = files[prefix + "MODEL_CARD.md"].decode()
    assert "Intended use" in card and "measured" in card and "accuracy" in card
    golden = json.loads(files[prefix + "golden.json"])
    assert len(golden["vectors"]) == 4 and golden["tolerance"]["atol"] > 0
    # digest.json covers the manifest too; the overall digest is the sha256 of a sha256sum-style statement
    d = json.loads(files[prefix + "digest.json"])
    sums = {n[len(prefix):]: hashlib.sha256(b).hexdigest() for n, b in files.items() if not n.endswith("digest.json")}
    assert d["files"] == sums and d["signature"] is None
    lines = "".join(f"{sums[n]}  {n}\n" for n in sorted(sums)).encode()
    assert d["digest"] == hashlib.sha256(lines).hexdigest()


def test_verify_passes(bundle: Path) -> None:
    res = compress("verify", str(bundle))
    assert res.returncode == 0, res.stderr
    assert "verified (unsigned: internal consistency only)" in res.stdout and "digest.json: overall digest" in res.stdout


def _tampered(bundle: Path, tmp_path: Path, change) -> Path:
    files = _entries(bundle)
    change(files)
    out = tmp_path / "bad.zip"
    out.write_bytes(bundle_bytes(files))
    return out


def test_flipped_byte_fails(bundle: Path, tmp_path: Path) -> None:
    def flip(files: dict[str, bytes]) -> None:
        name = "assets/digits-quickstart/model.onnx"
        data = bytearray(files[name])
        data[len(data) // 2] ^= 0xFF
        files[name] = bytes(data)

    res = compress("verify", str(_tampered(bundle, tmp_path, flip)))
    assert res.returncode == 1 and "model.onnx: sha256 mismatch" in res.stderr and "Traceback" not in res.stderr


def test_missing_file_fails(bundle: Path, tmp_path: Path) -> None:
    bad = _tampered(bundle, tmp_path, lambda f: f.pop("assets/digits-quickstart/labels.txt"))
    res = compress("verify", str(bad))
    assert res.returncode == 1 and "labels.txt: listed in the manifest but missing" in res.stderr


def test_path_escape_fails_without_extracting(bundle: Path, tmp_path: Path) -> None:
    bad = _tampered(bundle, tmp_path, lambda f: f.update({"../evil.txt": b"x"}))
    res = verify_bundle(bad)
    assert not res.ok and "escapes the bundle folder" in res.problems[0]
    assert not (tmp_path.parent / "evil.txt").exists()
    cli = compress("verify", str(bad))
    assert cli.returncode == 1 and "../evil.txt" in cli.stderr


def test_golden_mismatch_fails(bundle: Path, tmp_path: Path) -> None:
    def skew(files: dict[str, bytes]) -> None:
        p = "assets/digits-quickstart/"
        g = json.loads(files[p + "golden.json"])
        out = g["vectors"][0]["outputs"]
        key = next(iter(out))
        out[key]["data"] = [v + 1.0 for v in out[key]["data"]]
        files[p + "golden.json"] = json.dumps(g).encode()
        reseal(files)

    res = verify_bundle(_tampered(bundle, tmp_path, skew))
    assert not res.ok and "golden vector 0" in res.problems[0]


def test_not_a_zip_and_unknown_artifact(run_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"nope")
    res = compress("verify", str(junk))
    assert res.returncode == 2 and "not a valid bundle: not a zip" in res.stderr
    res = compress("package", str(run_dir), "--artifact", "nope", "-o", str(tmp_path / "x.zip"))
    assert res.returncode == 2 and "onnx-fp32" in res.stderr and not (tmp_path / "x.zip").exists()


def test_quickstart_tradeoff_section(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    t = report["tradeoff"]
    nets = {s["network"] for s in t["scenarios"]}
    assert nets == {"wifi", "4g", "3g_poor"}
    for s in t["scenarios"]:
        assert s["verdict"].startswith("on device:") and "break_even_rtt_ms" in s
        assert s["device"]["how"] in ("measured", "estimated")
        assert s["cloud"]["server_source"].startswith("measured on this host")
        # the cloud total is the sum of its stated parts: nothing invented
        c = s["cloud"]
        assert abs(c["latency_ms"] - (c["rtt_ms"] + c["transfer_ms"] + c["server_ms"])) < 1e-9
    assert "Cloud vs device" in (run_dir / "report.md").read_text()


def test_package_refuses_failed_parity_and_changed_files(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    report = json.loads((copy / "report.json").read_text())
    art = next(a for a in report["artifacts"] if a["name"] == "onnx-fp32")
    art["parity"]["passed"] = False
    (copy / "report.json").write_text(json.dumps(report))
    res = compress("package", str(copy), "--artifact", "onnx-fp32", "-o", str(tmp_path / "b.zip"))
    assert res.returncode == 2 and "failed its parity check" in res.stderr and not (tmp_path / "b.zip").exists()
    res = compress("package", str(copy), "--artifact", "onnx-fp32", "-o", str(tmp_path / "b.zip"), "--force")
    assert res.returncode == 0, res.stderr
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        manifest = json.loads(z.read("digits-quickstart/manifest.json"))
    assert any("parity" in w for w in manifest["warnings"])
    model = copy / art["path"]
    model.write_bytes(model.read_bytes() + b"x")
    res = compress("package", str(copy), "--artifact", "onnx-fp32", "-o", str(tmp_path / "c.zip"), "--force")
    assert res.returncode == 2 and "changed since the run" in res.stderr


def test_verify_a_zip_that_is_not_a_bundle(tmp_path: Path) -> None:
    other = tmp_path / "other.zip"
    other.write_bytes(bundle_bytes({"readme.txt": b"hi"}))
    res = compress("verify", str(other))
    assert res.returncode == 2 and "not an edgepack bundle" in res.stderr


def test_cloud_side_from_a_server_profile(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = compress(str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out), *FEW_RUNS, "-q",
                   "--set", "steps=[]", "--set", "export=[onnx]", "--set", "tradeoff.cloud.profile=cloud_x86")
    assert res.returncode == 0, res.stderr
    t = json.loads((out / "report.json").read_text())["tradeoff"]
    assert t["scenarios"] and all(s["cloud"]["server_source"].startswith("estimated from the cloud_x86 profile")
                                  for s in t["scenarios"])
    assert any("cloud_x86 profile (estimated)" in a for a in t["assumptions"])
