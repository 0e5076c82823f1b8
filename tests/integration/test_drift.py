"""A bundle carries fingerprint.json; `compress drift` tells held-out digits from brighter ones and another digit subset."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.cli import app
from export.bundle import verify_bundle
from export.bundle_verify import bundle_bytes
from tests.integration.test_bundle import quickstart_bundle, PREFIX, compress, quickstart_run


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quickstart_bundle(tmp_path_factory, "drift", "digits.zip")


@pytest.fixture(scope="module")
def digits(bundle: Path) -> dict[str, Path]:
    """Digits the fingerprint never saw (the train split past the calibration samples), brightened, a subset."""
    from compress.intake.data import load_dataset
    from compress.intake.recipe import DataSpec

    d = load_dataset(DataSpec(source="builtin:digits", eval_fraction=0.2, calibration_samples=128))
    held = d.train.take(np.arange(128, len(d.train)))
    x, y = np.asarray(held.x[0]), held.y
    folder = bundle.parent
    arrays = {"same": {"x": x}, "bright": {"x": (x * 1.3).astype(np.float32)}, "subset": {"x": x[y <= 2]},
              "cropped": {"x": x[:, :, :4, :]}, "unnamed": {"pixels": x}}
    for name, data in arrays.items():
        np.savez(folder / f"{name}.npz", **data)
    return {name: folder / f"{name}.npz" for name in arrays}


def drift(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["drift", *[str(a) for a in args]])
    return res.exit_code, res.output


def _files(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def test_the_bundle_carries_a_checksummed_fingerprint_and_the_reference(bundle: Path) -> None:
    files = _files(bundle)
    m = json.loads(files[PREFIX + "manifest.json"])
    assert {"fingerprint.json", "drift_check.py"} <= set(m["files"])
    assert m["fingerprint"] == {"file": "fingerprint.json", "reference_check": "drift_check.py", "samples": 487,
                                "format_version": 1}
    fp = json.loads(files[PREFIX + "fingerprint.json"])
    assert fp["reference"]["splits"] == {"calibration": 128, "eval": 359}
    assert fp["inputs"][0]["grid"] == [8, 8] and len(fp["inputs"][0]["features"]) == 1 + 64
    assert fp["outputs"][0]["kind"] == "classification" and sum(fp["outputs"][0]["class_prior"]["counts"]) == 487
    card = files[PREFIX + "MODEL_CARD.md"].decode()
    assert "## Monitoring input drift on the device" in card and "fun psi(" in card and "Siddiqi" in card
    assert verify_bundle(bundle).ok


def test_a_tampered_fingerprint_fails_verification(bundle: Path, digits: dict[str, Path], tmp_path: Path) -> None:
    files = _files(bundle)
    fp = json.loads(files[PREFIX + "fingerprint.json"])
    fp["thresholds"]["psi_drift"] = 1e9  # silence every alarm
    files[PREFIX + "fingerprint.json"] = json.dumps(fp).encode()
    bad = tmp_path / "tampered.zip"
    bad.write_bytes(bundle_bytes(files))
    res = verify_bundle(bad)
    assert any(p.startswith("fingerprint.json: sha256 mismatch") for p in res.problems)
    code, out = drift(bad, digits["bright"])
    assert code == 2 and "fails verification" in out and "fingerprint.json: sha256 mismatch" in out


def test_held_out_digits_are_no_drift(bundle: Path, digits: dict[str, Path]) -> None:
    code, out = drift(bundle, digits["same"])
    assert code == 0, out
    assert "no drift: 0 of 67 distributions moved (1310 new samples vs 487 reference" in out


def test_brighter_digits_drift_and_the_channel_and_pixels_are_named(bundle: Path, digits: dict[str, Path]) -> None:
    code, out = drift(bundle, digits["bright"])
    assert code == 1, out
    assert "DRIFT:" in out and "moved     input 'input' cell c0 [" in out
    code, out = drift(bundle, digits["bright"], "--json")
    report = json.loads(out)
    assert code == 1 and report["verdict"] == "drift"
    assert "channel 0" in {c["name"] for c in report["moved"]}
    code, out = drift(bundle, digits["bright"], "--psi-threshold", "100", "--ks-threshold", "1")
    assert code == 0 and "no drift: 0 of 67" in out


def test_another_digit_subset_drifts_in_the_class_prior(bundle: Path, digits: dict[str, Path]) -> None:
    code, out = drift(bundle, digits["subset"])
    assert code == 1, out
    assert "moved     output 'linear' class prior: PSI" in out
    for label in ("three", "eight", "nine"):
        assert f"({label}): " in out and "-> 0.0% of decisions (fewer" in out
    for label in ("zero", "one", "two"):
        assert f"({label}): " in out
    assert "of decisions (more" in out


def test_inputs_that_do_not_fit_are_exit_2(bundle: Path, digits: dict[str, Path], tmp_path: Path) -> None:
    code, out = drift(bundle, digits["cropped"])
    assert code == 2 and "do not fit the bundle's model" in out and "(1, 4, 8)" in out and "Traceback" not in out
    code, out = drift(bundle, digits["unnamed"])
    assert code == 2 and "needs an array 'x'" in out and "pixels" in out
    code, out = drift(bundle, tmp_path / "missing.npz")
    assert code == 2 and "not found" in out
    code, out = drift(bundle, digits["same"], "--psi-threshold", "0")
    assert code == 2 and "--psi-threshold must be > 0" in out


def test_the_bundled_reference_gives_the_same_numbers(bundle: Path, digits: dict[str, Path], tmp_path: Path) -> None:
    """drift_check.py from the bundle, run alone on the model's outputs, agrees with compress drift to 1e-6."""
    from bench.runtime import open_model, predict

    files = _files(bundle)
    for name in ("fingerprint.json", "drift_check.py", "model.onnx"):
        (tmp_path / name).write_bytes(files[PREFIX + name])
    session = open_model(tmp_path / "model.onnx")
    for case in ("same", "bright", "subset"):
        x = np.load(digits[case])["x"]
        np.savez(tmp_path / "outputs.npz", **{session.outputs[0]["name"]: predict(session, [x])[0]})
        res = subprocess.run([sys.executable, "drift_check.py", "fingerprint.json", str(digits[case]), "--outputs",
                              "outputs.npz", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        ref = json.loads(res.stdout)
        code, out = drift(bundle, digits[case], "--json")
        tool = json.loads(out)
        assert res.returncode == code and ref["verdict"] == tool["verdict"]
        assert [(c["tensor"], c["name"]) for c in ref["checks"]] == [(c["tensor"], c["name"]) for c in tool["checks"]]
        for a, b in zip(tool["checks"], ref["checks"]):
            assert abs(a["psi"] - b["psi"]) <= 1e-6
            assert (a["ks"] is None and b["ks"] is None) or abs(a["ks"] - b["ks"]) <= 1e-6


def test_an_int8_tflite_bundle_takes_float_inputs_as_its_fingerprint_does(tmp_path_factory: pytest.TempPathFactory,
                                                                          digits: dict[str, Path]) -> None:
    """The int8 model's input is quantized by the runtime: new inputs are floats, like the fingerprint's."""
    run = quickstart_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("drift-tflite") / "ios.zip"
    res = compress("package", str(run), "--artifact", "tflite-int8", "--platform", "ios", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert drift(out, digits["same"])[0] == 0
    code, text = drift(out, digits["bright"])
    assert code == 1 and "cell c0 [" in text


def test_a_run_without_data_bundles_without_a_fingerprint_and_says_why(tmp_path_factory: pytest.TempPathFactory,
                                                                      digits: dict[str, Path]) -> None:
    import shutil

    import yaml

    run = tmp_path_factory.mktemp("drift-nodata") / "run"
    shutil.copytree(quickstart_run(tmp_path_factory), run)
    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    recipe.pop("data")
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    out = run.parent / "nodata.zip"
    res = compress("package", str(run), "--artifact", "onnx-fp32", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "note: no fingerprint.json" in res.stdout and "no data section" in res.stdout
    files = _files(out)
    manifest = json.loads(files["digits-quickstart/manifest.json"])
    assert manifest["fingerprint"]["file"] is None and "fingerprint.json" not in manifest["files"]
    assert "no data section" in files["digits-quickstart/MODEL_CARD.md"].decode()
    assert verify_bundle(out).ok
    code, text = drift(out, digits["same"])
    assert code == 2 and "no fingerprint.json in the bundle" in text
