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
