"""`import compress` and `compress --help` must stay light."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("torch", "onnxruntime", "onnx", "tensorflow", "litert_torch", "ai_edge_litert", "ai_edge_quantizer", "jax")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_packages_do_not_import_heavy_backends() -> None:
    mods = _modules_after("import compress, export, bench, devices")
    assert not [m for m in HEAVY if m in mods]


def test_cli_and_recipe_do_not_import_heavy_backends() -> None:
    mods = _modules_after("import compress.cli, compress.intake.recipe, compress.intake.recipe_io, bench.report, devices.base")
    assert not [m for m in HEAVY if m in mods]


def test_help_is_fast_and_light() -> None:
    out = subprocess.run([sys.executable, "-m", "compress", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "recipe" in out.stdout.lower()
