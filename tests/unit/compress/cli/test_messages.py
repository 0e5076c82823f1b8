"""What the command line prints quotes the user's text exactly: no markup, no emoji.

``adb:phone:`` once printed as ``adb☎``, and a path with ``[red]`` in it lost those
characters and coloured the rest. Every message goes through compress.core.console.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.cli import app
from tests.conftest import TINY_RECIPE, write_recipe

runner = CliRunner()


def _refused(args: list[str], code: int, *verbatim: str) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output and "☎" not in res.output
    for text in verbatim:
        assert text in res.stderr, res.stderr
    return res.stderr


@pytest.mark.parametrize("target, verbatim", [
    ("ssh:phone:", ["target ssh:phone:", "'phone:'"]),
    ("estimate:[red]phone:", ["target estimate:[red]phone:", "'[red]phone:'"]),
])
def test_target_names_print_verbatim(target: str, verbatim: list[str]) -> None:
    _refused(["devices", "check", target], 2, *verbatim)


def test_paths_print_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "[red]runs:phone:[/red]"
    _refused(["validate", str(folder / "recipe.yaml")], 2, str(folder / "recipe.yaml"))
    _refused(["bench", str(folder / "m.onnx")], 2, f"{folder / 'm.onnx'}: file not found")
    _refused(["compare", str(folder / "a.json"), str(folder / "b.json")], 2, str(folder))


def test_recipe_values_print_verbatim(tiny_dir: Path) -> None:
    bench = '{targets: [local], adb: {"phone:": {serial: "[bold]emulator:phone:", adb_port: 5555}}}'
    recipe = write_recipe(tiny_dir, "\n".join(f"bench: {bench}" if line.startswith("bench:") else line
                                              for line in TINY_RECIPE.splitlines()))
    res = runner.invoke(app, ["devices", "list", "--recipe", str(recipe)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "adb:phone:" in res.stdout and "Android [bold]emulator:phone: via 127.0.0.1:5555" in res.stdout, res.stdout
    assert "☎" not in res.stdout
