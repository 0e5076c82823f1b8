"""What the run's step cache keys on: edgepack's own code among it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compress.runner.runcache import _PACKAGES, SOURCE_ROOT, source_digest


def test_source_digest_covers_every_package_and_changes_with_the_code(tmp_path: Path) -> None:
    for pkg in _PACKAGES:
        assert list((SOURCE_ROOT / pkg).rglob("*.py")), f"{pkg}/ is not under {SOURCE_ROOT}"
        shutil.copytree(SOURCE_ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(tmp_path)
    assert before == source_digest(SOURCE_ROOT) == source_digest()
    target = tmp_path / "bench" / "latency.py"
    target.write_text(target.read_text() + "\n# a change\n")
    assert source_digest(tmp_path) != before


def test_source_digest_refuses_a_tree_without_a_package(tmp_path: Path) -> None:
    (tmp_path / "compress").mkdir()
    (tmp_path / "compress" / "x.py").write_text("")
    with pytest.raises(RuntimeError, match="export"):
        source_digest(tmp_path)


def test_a_moved_project_keeps_its_step_keys(tmp_path: Path) -> None:
    """Referenced files count by their contents and their place in the recipe's folder, never their
    absolute path: the same project in two folders gives the same file labels and hashes."""
    from types import SimpleNamespace

    from compress.runner.runcache import _referenced_files

    def project(root: Path) -> list[tuple[str, str]]:
        (root / "models").mkdir(parents=True)
        (root / "models" / "net.py").write_text("def make(): ...\n")
        (root / "models" / "net.pt").write_bytes(b"weights")
        model = SimpleNamespace(factory=f"{root}/models/net.py:make", weights=str(root / "models" / "net.pt"))
        recipe = SimpleNamespace(model=model, data=SimpleNamespace(source="builtin:digits"))
        return [(label, p.read_bytes().hex()) for label, p in _referenced_files(recipe, root, {"ratio": 0.5})]

    here, there = project(tmp_path / "a"), project(tmp_path / "elsewhere" / "b")
    assert here == there
    assert [label for label, _ in here] == ["models/net.py:make", "models/net.pt"]
