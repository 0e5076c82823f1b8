"""The quickstart's report.html renders in headless Chromium with no console error and no fetch.

The screenshot is kept as a test artifact in ``tests/artifacts/report.png``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_run import compress

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian: apt-get install chromium "
                                                      "chromium-driver; .ci/run installs it)"),
]


def chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a local file, no network services, console messages on stderr."""
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
         *mode, page.as_uri()],
        check=False, capture_output=True, text=True, timeout=120, cwd=tmp,
    )


def console_messages(stderr: str) -> list[str]:
    """Messages the page wrote to the console (errors, CSP violations, uncaught exceptions)."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[(:]", line)]


@pytest.fixture(scope="module")
def quickstart_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qh") / "run"
    res = compress(str(ROOT / "recipes" / "quickstart.yaml"), "--out", str(out), "--set", "bench.runs=50")
    assert res.returncode == 0, res.stderr
    page = out / "report.html"
    assert page.is_file(), "the runner wrote no report.html"
    return page


def test_console_capture_sees_errors(tmp_path: Path) -> None:
    # The check below is only worth something if a broken page does show up in it.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><head><meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\">"
                   "</head><body><img src='http://example.invalid/x.png'></body></html>")
    res = chromium(bad, tmp_path, "--dump-dom")
    assert any("Content Security Policy" in m for m in console_messages(res.stderr)), res.stderr[-2000:]


def test_report_renders_without_errors(quickstart_html: Path, tmp_path: Path) -> None:
    page = quickstart_html.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page
    res = chromium(quickstart_html, tmp_path, "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not console_messages(res.stderr), console_messages(res.stderr)
    dom = res.stdout
    for section in ("overview", "artifacts", "latency", "metrics", "lineage", "advisories", "environment"):
        assert f'id="{section}"' in dom, section
    for plot in ("plot-scatter", "plot-size", "plot-distribution"):
        assert re.search(rf'id="{plot}"[^>]*>\s*<svg', dom), plot
    assert "onnx-fp32" in dom and "measured" in dom
    if '"tradeoff": null' not in (quickstart_html.parent / "report.json").read_text():
        assert 'id="tradeoff"' in dom


def test_report_screenshot(quickstart_html: Path, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = tmp_path / "report.png"
    res = chromium(quickstart_html, tmp_path, f"--screenshot={shot}")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert not console_messages(res.stderr), console_messages(res.stderr)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page is a few kB
    shutil.copy(shot, ARTIFACTS / "report.png")
    shutil.copy(quickstart_html, ARTIFACTS / "report.html")
