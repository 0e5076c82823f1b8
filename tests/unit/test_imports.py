"""`import compress` and `compress --help` must stay light."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "onnxruntime", "onnx", "tensorflow", "litert_torch", "ai_edge_litert", "ai_edge_quantizer", "jax")
# What `compress --help` (and --version, completion) must not import either: each costs tens of
# milliseconds to start, more than the help itself. typer (with its vendored click) is the only
# third-party package the command line needs before a command runs.
STARTUP_HEAVY = HEAVY + ("rich", "pydantic", "numpy", "yaml", "scipy", "pandas", "markdown_it", "pygments", "click",
                         "importlib.metadata", "compress.intake", "compress.runner", "bench", "devices", "export")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


def _modules_of_command(*args: str) -> tuple[str, set[str]]:
    """What ``compress ARGS`` printed and the modules loaded when it exited (run as the console script runs it)."""
    # printed by an exit handler: the command ends the process itself once its exit handlers ran
    code = ("import atexit, sys\natexit.register(lambda: print('MODULES', ' '.join(sys.modules)))\n"
            "sys.argv = ['compress', *sys.argv[1:]]\nfrom compress.cli import main\nmain()\n")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert "MODULES " in out.stdout and "Traceback" not in out.stderr, out.stderr[-2000:]
    text, _, mods = out.stdout.rpartition("MODULES ")
    return text, set(mods.split())


def _loaded(mods: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in mods)]


def test_packages_do_not_import_heavy_backends() -> None:
    mods = _modules_after("import compress, export, bench, devices")
    assert not [m for m in HEAVY if m in mods]


def test_cli_and_recipe_do_not_import_heavy_backends() -> None:
    mods = _modules_after("import compress.cli, compress.intake.recipe, compress.intake.recipe_io, bench.report, devices.base")
    assert not [m for m in HEAVY if m in mods]


@pytest.mark.parametrize("args, allowed", [
    (["--help"], ()),
    (["--version"], ("importlib.metadata",)),  # where the version comes from
    # typer (0.29) coerces every parameter a group parses with a pydantic TypeAdapter, its
    # own --help included: a subcommand's help loads pydantic, nothing else heavy
    (["bench", "--help"], ("pydantic", "importlib.metadata")),  # pydantic reads its plugins' metadata
    (["devices", "--help"], ("pydantic", "importlib.metadata")),
    (["shadow", "--help"], ("pydantic", "importlib.metadata")),
])
def test_help_imports_nothing_heavy(args: list[str], allowed: tuple[str, ...]) -> None:
    """Help and version start at once: no rich, numpy, yaml, pydantic, nor the project's lower layers.

    The time itself is measured in tests/benchmarks/test_cli_startup.py, beside a bare Python.
    """
    text, mods = _modules_of_command(*args)
    assert ("Usage: compress" in text) if "--help" in args else text.startswith("edgepack ")
    heavy = [m for m in _loaded(mods, STARTUP_HEAVY) if m not in allowed]
    assert not heavy, heavy


def test_the_check_can_fail(tmp_path) -> None:  # noqa: ANN001
    """The same probe sees a heavy module when a command does load one (``compress validate`` reads YAML)."""
    _, mods = _modules_of_command("validate", str(tmp_path / "missing.yaml"))
    assert "yaml" in _loaded(mods, STARTUP_HEAVY) or "compress.intake" in _loaded(mods, STARTUP_HEAVY)


def test_help_is_fast_and_light() -> None:
    out = subprocess.run([sys.executable, "-m", "compress", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "recipe" in out.stdout.lower()
