"""`compress shadow` on the quickstart's artifacts, a damaged candidate, a bundle, bad inputs; the recipe section.

The quickstart run is the one the bundle tests share (one per session). Logged inputs are the
last 300 digits with their labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.cli import app
from tests.conftest import TINY_RECIPE, write_recipe
from tests.integration.test_bundle import compress, quickstart_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quickstart_run(tmp_path_factory)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from compress.intake.data import _digits

    x, y = _digits()
    path = tmp_path_factory.mktemp("shadow-logged") / "logged.npz"
    np.savez(path, x=x[-300:], y=y[-300:])
    return path


@pytest.fixture(scope="module")
def damaged(run_dir: Path) -> Path:
    """The fp32 ONNX with every weight tensor perturbed by Gaussian noise of 30% of its spread."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(run_dir / "exports" / "onnx-fp32" / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.size > 16:
            noisy = a + rng.normal(0, 0.3 * a.std(), a.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    path = run_dir.parent / "damaged.onnx"
    onnx.save(model, str(path))
    return path


def shadow(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["shadow", *args])
    return res.exit_code, res.output


def test_fp32_vs_int8_reports_agreement_and_flips(run_dir: Path, logged: Path, tmp_path: Path) -> None:
    """The acceptance: latency of both in one interleaved run (few runs: the figures are not asserted)."""
    code, out = shadow(f"{run_dir}:onnx-fp32", f"{run_dir}:onnx-static", "--inputs", str(logged), "--out",
                       str(tmp_path), "--runs", "5", "--repeats", "2")
    assert code == 0, out
    assert "shadow PASS: linear: agreement" in out and "flip(s) of 300" in out
    assert "latency (measured, local," in out and "2 x 5 runs interleaved" in out
    result = json.loads((tmp_path / "shadow.json").read_text())
    (m,) = result["outputs"]
    assert m["agreement"] >= 0.99 and m["flip_rate"] == 1 - m["agreement"]
    assert np.array(m["confusion_matrix"]).sum() == 300 and len(m["confusion_matrix"]) == 10
    assert m["labels"]["baseline_accuracy"] > 0.9 and 0 <= m["labels"]["candidate_ece"] <= 1
    assert result["outputs_matched_by"] == "name" and result["inputs"]["labels"] == "y in the inputs file"
    lat = result["latency"]
    assert lat["how"] == "measured" and lat["repeats"] == 2 and lat["baseline"]["p50_ms"] > 0
    assert lat["candidate"]["p50_ms"] > 0 and "speedup" in lat
    assert (tmp_path / "shadow.md").read_text().startswith("# Shadow test: onnx-static vs onnx-fp32")


def test_a_damaged_candidate_fails_with_its_flip_rate_and_worst_inputs(run_dir: Path, logged: Path,
                                                                       damaged: Path, tmp_path: Path) -> None:
    code, out = shadow(f"{run_dir}:onnx-fp32", str(damaged), "--inputs", str(logged), "--out", str(tmp_path),
                       "--no-latency", "--worst", "8")
    assert code == 1, out
    assert "shadow FAIL" in out and "flip_rate" in out and "> limit 0.01" in out
    result = json.loads((tmp_path / "shadow.json").read_text())
    (m,) = result["outputs"]
    assert m["flip_rate"] > 0.01 and f"flip rate {m['flip_rate']:.4f}" in out
    check = next(c for c in result["verdict"]["checks"] if c["measure"] == "flip_rate")
    assert check == {"output": "linear", "measure": "flip_rate", "value": m["flip_rate"], "limit": 0.01,
                     "passed": False}
    with np.load(tmp_path / "worst.npz") as z:
        idx = z["indices"]
        assert len(idx) == 8 and idx.tolist() == result["worst"]["indices"]
        with np.load(logged) as src:
            np.testing.assert_array_equal(z["x_input"], src["x"][idx])
            np.testing.assert_array_equal(z["y"], src["y"][idx])
        flipped = z["baseline_0"].argmax(1) != z["candidate_0"].argmax(1)
    assert flipped.all()  # with this many flips the worst eight all flipped


def test_fp32_onnx_vs_int8_tflite_matches_outputs_by_position(run_dir: Path, logged: Path, tmp_path: Path) -> None:
    code, out = shadow(f"{run_dir}:onnx-fp32", f"{run_dir}:tflite-int8", "--inputs", str(logged), "--out",
                       str(tmp_path), "--no-latency", "--max-flip-rate", "0.05", "--json")
    assert code == 0, out
    result = json.loads(out[out.index("{"):])
    assert result["outputs_matched_by"] == "position" and "matched by position" in result["outputs_matched_note"]
    assert result["candidate"]["format"] == "tflite" and result["outputs"][0]["agreement"] >= 0.95


def test_a_bundle_side_is_verified_then_used(run_dir: Path, logged: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "fp32.zip"
    res = compress("package", str(run_dir), "--artifact", "onnx-fp32", "-o", str(bundle))
    assert res.returncode == 0, res.stderr
    code, out = shadow(str(bundle), f"{run_dir}:onnx-fp32", "--inputs", str(logged), "--out", str(tmp_path / "s"),
                       "--no-latency")
    assert code == 0, out
    result = json.loads((tmp_path / "s" / "shadow.json").read_text())
    assert "(verified)" in result["baseline"]["source"] and result["outputs"][0]["flips"] == 0
    broken = tmp_path / "broken.zip"
    broken.write_bytes(bundle.read_bytes()[:200])
    code, out = shadow(str(broken), f"{run_dir}:onnx-fp32", "--inputs", str(logged), "--out", str(tmp_path / "b"))
    assert code == 2 and "broken.zip" in out and "Traceback" not in out


def test_bad_inputs_exit_2_with_a_message(run_dir: Path, logged: Path, damaged: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 8, 8), np.float32))
    other = tmp_path / "other.npz"
    np.savez(other, pixels=np.zeros((4, 1, 8, 8), np.float32))
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(3, np.int64))
    base = f"{run_dir}:onnx-fp32"
    cases = {
        "not found": ([str(tmp_path / "missing.onnx"), base, "--inputs", str(logged)], "missing.onnx"),
        "no model artifact 'nope'": ([f"{run_dir}:nope", base, "--inputs", str(logged)], "onnx-static"),
        "needs the artifact too": ([str(run_dir), base, "--inputs", str(logged)], "ARTIFACT"),
        "--inputs": ([base, str(damaged), "--inputs", str(tmp_path / "none.npz")], "file not found"),
        "does not fit the baseline": ([base, str(damaged), "--inputs", str(wrong)], "(3, 8, 8)"),
        "needs an array 'x'": ([base, str(damaged), "--inputs", str(other)], "pixels"),
        "3 labels for 300": ([base, str(damaged), "--inputs", str(logged), "--labels", str(short)], "--labels"),
        "expected a .onnx or .tflite": ([base, str(logged), "--inputs", str(logged)], "candidate"),
    }
    for what, (args, also) in cases.items():
        code, out = shadow(*args, "--out", str(tmp_path / "out"), "--no-latency")
        assert code == 2, (what, out)
        assert what in out and also in out and "Traceback" not in out, (what, out)
    assert not list((tmp_path / "out").iterdir())  # nothing half-written


def test_a_changed_run_file_is_refused(run_dir: Path, logged: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.tflite", "*.html"))
    model = copy / "steps" / "01-quantize" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    code, out = shadow(f"{copy}:onnx-fp32", f"{copy}:onnx-static", "--inputs", str(logged), "--no-latency",
                       "--out", str(tmp_path / "out"))
    assert code == 2 and "changed since the run" in out


SHADOW_RECIPE = TINY_RECIPE.replace("export: [onnx]", "steps: [{quantize: {method: static}}]\nexport: [onnx]")
FEW_RUNS = ("--set", "bench.runs=3", "--set", "bench.repeats=1")  # one timing process: no latency is checked


def test_the_recipe_shadow_section(tiny_dir: Path) -> None:
    """Passes at the default flip rate; an impossible confidence-shift limit degrades the int8 artifact (exit 1)."""
    recipe = write_recipe(tiny_dir, SHADOW_RECIPE + "shadow: {max_flip_rate: 0.5, worst: 5}\n")
    res = CliRunner().invoke(app, [str(recipe), "--out", str(tiny_dir / "ok"), "--quiet", *FEW_RUNS])
    assert res.exit_code == 0, res.output
    report = json.loads((tiny_dir / "ok" / "report.json").read_text())
    (name,) = report["shadow"]["artifacts"]
    result = report["shadow"]["artifacts"][name]
    assert name == "onnx-static" and result["baseline"]["name"] == "onnx-fp32" and result["verdict"]["passed"]
    assert result["inputs"]["file"] == "the recipe's eval split" and result["inputs"]["samples"] == 30
    assert (tiny_dir / "ok" / result["worst"]["file"]).is_file()
    assert "## Shadow tests" in (tiny_dir / "ok" / "report.md").read_text()
    html = (tiny_dir / "ok" / "report.html").read_text().split('<section id="shadow">')[1].split("</section>")[0]
    assert "onnx-static" in html and "onnx-fp32" in html

    x = np.random.default_rng(1).standard_normal((40, 1, 8, 8)).astype(np.float32)
    np.savez(tiny_dir / "logged.npz", x=x, y=(x.mean(axis=(1, 2, 3)) > 0).astype(np.int64))
    logged = write_recipe(tiny_dir, SHADOW_RECIPE + "shadow: {inputs: logged.npz, max_flip_rate: 0.5}\n", "logged.yaml")
    res = CliRunner().invoke(app, [str(logged), "--out", str(tiny_dir / "logged"), "--quiet", *FEW_RUNS])
    assert res.exit_code == 0, res.output
    result = json.loads((tiny_dir / "logged" / "report.json").read_text())["shadow"]["artifacts"]["onnx-static"]
    assert result["inputs"]["file"] == str(tiny_dir / "logged.npz") and result["inputs"]["samples"] == 40
    assert result["outputs"][0]["labels"]["baseline_accuracy"] is not None

    strict = write_recipe(tiny_dir, SHADOW_RECIPE + "shadow: {max_confidence_shift: 0.0}\n", "strict.yaml")
    res = CliRunner().invoke(app, [str(strict), "--out", str(tiny_dir / "bad"), "--quiet", *FEW_RUNS])
    assert res.exit_code == 1, res.output
    report = json.loads((tiny_dir / "bad" / "report.json").read_text())
    art = next(a for a in report["artifacts"] if a["name"] == "onnx-static")
    assert report["status"] == "degraded" and art["status"] == "degraded"
    assert any("shadow vs onnx-fp32" in r and "confidence_shift" in r for r in art["gate"]["reasons"])
    assert any(a["code"] == "shadow_failed" for a in report["advisories"])
    res = CliRunner().invoke(app, ["package", str(tiny_dir / "bad"), "--artifact", "onnx-static", "-o",
                                   str(tiny_dir / "bad.zip")])
    assert res.exit_code != 0 and "confidence_shift" in res.output and not (tiny_dir / "bad.zip").exists()
