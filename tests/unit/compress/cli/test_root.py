"""The root command's own surface: ``--version`` and shell completion for bash, zsh and fish.

Completion goes through the real shells where they are installed (Debian ``bash``, ``zsh``,
``fish``): the script ``--show-completion`` prints is loaded into the shell, and the shell asks
``compress`` for the candidates of a real command line, as it does when the user presses Tab.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _bin(tmp_path: Path) -> Path:
    """A folder holding a ``compress`` executable that runs this checkout (as the console script would)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    exe = folder / "compress"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m compress "$@"\n')
    exe.chmod(0o755)
    return folder


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_TYPER", "_COMPRESS"))}
    env.update(PATH=f"{_bin(tmp_path)}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), HOME=str(tmp_path),
               XDG_CONFIG_HOME=str(tmp_path / ".config"), **extra)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


def test_version_is_the_installed_package_version(tmp_path: Path) -> None:
    res = _run([sys.executable, "-m", "compress", "--version"], _env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"edgepack {version('edgepack')}"


def test_help_names_version_and_completion(tmp_path: Path) -> None:
    res = _run([sys.executable, "-m", "compress", "--help"], _env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Usage: compress ")  # the same program name as the console script
    for option in ("--version", "--install-completion", "--show-completion"):
        assert option in res.stdout


@pytest.mark.parametrize("shell, words", [
    ("bash", ["complete -o default -F _compress_completion compress", "_COMPRESS_COMPLETE=complete_bash"]),
    ("zsh", ["#compdef compress", "_COMPRESS_COMPLETE=complete_zsh"]),
    ("fish", ["complete --command compress", "_COMPRESS_COMPLETE=complete_fish"]),
])
def test_show_completion_for_each_shell(tmp_path: Path, shell: str, words: list[str]) -> None:
    # typer's documented switch for naming the shell instead of detecting it
    env = _env(tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    res = _run([sys.executable, "-m", "compress", "--show-completion", shell], env)
    assert res.returncode == 0, res.stderr
    assert all(w in res.stdout for w in words), res.stdout


@pytest.mark.parametrize("shell, installed, rc", [
    ("bash", ".bash_completions/compress.sh", (".bashrc", ".bash_completions/compress.sh")),
    ("zsh", ".zfunc/_compress", (".zshrc", "fpath+=~/.zfunc")),
    ("fish", ".config/fish/completions/compress.fish", None),
])
def test_install_completion_detects_the_shell_it_runs_in(tmp_path: Path, shell: str, installed: str,
                                                          rc: tuple[str, str] | None) -> None:
    """``compress --install-completion`` typed in each shell finds that shell and writes its files."""
    exe = _shell(shell)
    # the trailing `true` keeps the shell alive as compress's parent (a lone command is exec'd)
    res = _run([exe, "-c", "compress --install-completion; true"], _env(tmp_path))
    assert res.returncode == 0 and f"{shell} completion installed" in res.stdout, res.stdout + res.stderr
    script = (tmp_path / installed).read_text()
    assert "_COMPRESS_COMPLETE" in script
    if rc is not None:
        assert rc[1] in (tmp_path / rc[0]).read_text()  # the shell's start-up file loads it
    if shell == "zsh":  # the installed file is valid zsh
        assert _run([exe, "-n", str(tmp_path / installed)], _env(tmp_path)).returncode == 0


def test_bash_completes_a_real_command_line(tmp_path: Path) -> None:
    bash = _shell("bash")
    env = _env(tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    script = _run([sys.executable, "-m", "compress", "--show-completion", "bash"], env).stdout
    (tmp_path / "compress.bash").write_text(script)

    def complete(line: str) -> list[str]:
        probe = (f"source {tmp_path / 'compress.bash'}\nCOMP_WORDS=({line})\n"
                 f"COMP_CWORD={len(line.split()) - (0 if line.endswith(' ') else 1)}\n"
                 "_compress_completion compress\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
        res = _run([bash, "--norc", "-c", probe], _env(tmp_path))
        assert res.returncode == 0, res.stderr
        return res.stdout.split()

    assert complete("compress ca") == ["cache"]
    assert set(complete("compress cache '' ")) >= {"ls", "prune", "clear"}
    assert complete("compress bench m.onnx --sha") == ["--shape"]
    # a recipe path first means `compress run RECIPE`: run's options complete
    assert complete("compress recipe.yaml --no-c") == ["--no-cache"]


def test_zsh_completion_returns_candidates(tmp_path: Path) -> None:
    """zsh evaluates what ``compress`` prints for its command line: the command names with their help."""
    zsh = _shell("zsh")
    env = _env(tmp_path, _COMPRESS_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="compress devices ")
    res = _run(["compress"], env)
    assert res.returncode == 0, res.stderr
    assert all(f'"{c}":' in res.stdout for c in ("list", "check", "setup", "calibrate")), res.stdout
    loaded = _run([zsh, "-f", "-c", "autoload -U compinit && compinit -u -d $HOME/.zcompdump && "
                   "eval \"$(compress --show-completion zsh)\" && whence -w _compress_completion"],
                  _env(tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1"))
    assert "_compress_completion: function" in loaded.stdout, loaded.stdout + loaded.stderr


def test_fish_completes_a_real_command_line(tmp_path: Path) -> None:
    fish = _shell("fish")
    env = _env(tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    probe = "compress --show-completion fish | source; complete -C'compress dev'; complete -C'compress cache pr'"
    res = _run([fish, "--no-config", "-c", probe], env)
    assert res.returncode == 0, res.stderr
    names = [line.split("\t")[0] for line in res.stdout.splitlines()]
    assert "devices" in names and "prune" in names, res.stdout


def test_a_recipe_with_a_search_section_runs_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compress RECIPE`` of a recipe with ``search:`` is ``compress search RECIPE`` (the issue's promise)."""
    from typer.testing import CliRunner

    import compress.cli.search as search_cli
    from compress.cli import app

    calls: list[dict] = []
    monkeypatch.setattr(search_cli, "search_cmd", lambda recipe, **kw: calls.append({"recipe": recipe, **kw}))
    recipe = ROOT / "recipes" / "search-digits.yaml"
    res = CliRunner().invoke(app, [str(recipe), "--set", "search.budget.trials=2", "--no-cache"])
    assert res.exit_code == 0, res.output
    assert "running the search" in res.output
    (call,) = calls
    assert call["recipe"] == recipe and call["set_"] == ["search.budget.trials=2"] and call["no_cache"] is True
