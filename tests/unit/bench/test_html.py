"""report.html: every section present, plots inline, nothing fetched, text escaped."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import ClassVar

import numpy as np

from bench.html import markdown_to_html, pareto_front, render_html
from bench.latency import summarize
from compress.core.report_schema import (
    AdvisoryReport,
    ArtifactReport,
    ModelFacts,
    Parity,
    Report,
    StepReport,
    TargetResult,
)


class _Collector(HTMLParser):
    """Tags, ids, attributes that could reach the network, and unbalanced tags."""

    VOID: ClassVar[set[str]] = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr", "area", "base", "embed", "track"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.urls: list[str] = []
        self.stack: list[str] = []
        self.unbalanced: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k == "id" and v:
                self.ids.add(v)
            if k in ("src", "href", "xlink:href", "action", "data") and v and not v.startswith(("#", "data:")):
                self.urls.append(f"{tag} {k}={v}")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("src", "href", "xlink:href") and v and not v.startswith(("#", "data:")):
                self.urls.append(f"{tag} {k}={v}")

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.unbalanced.append(tag)


def _target(median: float, seed: int, batch: int = 1, noisy_load: float | None = None) -> TargetResult:
    rng = np.random.default_rng(seed)
    times = median * (1 + 0.02 * rng.standard_normal(120))
    s = summarize(times, threads=1, batch=batch, loadavg=noisy_load, cores=2)
    return TargetResult(target="local", how="measured", device="x86 (2 cores)", threads=1, batch=batch, latency_ms=s,
                        times_ms=times.tolist(), throughput_items_s=1e3 * batch / s.p50, load_ms=30.0,
                        memory_increase_mb=12.0, details={"warmup_runs": 30})


def rich_report() -> Report:
    """Three artifacts (one off the Pareto front), two settings, steps, advisories, estimated and failed targets."""
    estimated = TargetResult(target="estimate:rpi4", how="estimated", device="Raspberry Pi 4", threads=1,
                             latency_ms=summarize([9.0, 9.0], threads=1, how="estimated"), estimate_band_ms=(6.0, 13.0))
    emulated = TargetResult(target="emulated:aarch64", how="emulated", device="qemu cortex-a72", threads=1,
                            parity=Parity(reference="host", max_abs_diff=1e-6, mean_abs_diff=1e-7, passed=True, samples=8))
    failed = TargetResult(target="ssh:pi", how="measured", device="-", threads=1, error="connection refused")
    arts = [
        ArtifactReport(name="onnx-fp32", format="onnx", path="a.onnx", size_bytes=400_000, accuracy=0.97,
                       metrics={"accuracy": 0.97, "macro_f1": 0.96, "agreement": 1.0, "confusion_matrix": [[5, 1], [0, 6]]},
                       parity=Parity(reference="baseline", max_abs_diff=2e-6, mean_abs_diff=1e-7, agreement=1.0,
                                     passed=True, samples=12),
                       parent="baseline", step="export:onnx",
                       targets=[_target(2.0, 0), _target(9.0, 1, batch=8), estimated, emulated, failed]),
        ArtifactReport(name="onnx-int8", format="onnx", path="b.onnx", size_bytes=110_000, zipped_bytes=90_000,
                       accuracy=0.965, precision="int8", metrics={"accuracy": 0.965, "agreement": 0.99},
                       parent="onnx-fp32", step="02-quantize", targets=[_target(0.8, 2, noisy_load=5.0)]),
        ArtifactReport(name="slow<b>&", format="tflite", path="c.tflite", size_bytes=420_000, accuracy=0.96,
                       parent="onnx-fp32", step="export:tflite", targets=[_target(3.0, 3)]),
    ]
    return Report(
        recipe={"name": "demo"}, created="2026-01-01T00:00:00+00:00", status="ok",
        env={"cpu": "AMD EPYC", "cores": 2, "cpu_flags": ["avx2", "avx512_vnni"], "loadavg": [0.5, 0.4, 0.3],
             "machine": "x86_64", "affinity": [0, 1], "versions": {"onnxruntime": "1.32.0"}},
        task={"kind": "classification", "labels": ["no", "yes"]},
        baseline=ModelFacts(params=1000, macs=20000, size_bytes=390_000, accuracy=0.97),
        steps=[StepReport(index=1, kind="prune", name="01-prune", config={"ratio": 0.5}, duration_s=3.2,
                          before=ModelFacts(params=1000, accuracy=0.97), after=ModelFacts(params=500, accuracy=0.968),
                          details={"achieved_ratio": 0.5})],
        artifacts=arts,
        advisories=[AdvisoryReport(code="noisy_host", message="load was <high>", artifact="onnx-int8")],
        tradeoff={"markdown": "## Cloud vs device\n\n| artifact | verdict |\n|---|---|\n| onnx-int8 | **device** wins |\n\n"
                              "Assumptions:\n\n- wifi RTT 20 ms"},
        shadow={"artifacts": {"onnx-int8": {}}, "markdown": "## Shadow tests\n\n### onnx-int8 vs onnx-fp32 <PASS>\n\n"
                "| output | agreement | flips |\n|---|---|---|\n| y | 0.9950 | 2 of 400 |"},
    )


def test_sections_plots_and_no_network() -> None:
    page = render_html(rich_report())
    p = _Collector()
    p.feed(page)
    assert not p.unbalanced and not p.stack, (p.unbalanced, p.stack)
    assert {"overview", "artifacts", "latency", "metrics", "lineage", "shadow", "advisories", "tradeoff",
            "environment"} <= p.ids
    assert {"plot-scatter", "plot-size", "plot-distribution"} <= p.ids
    assert p.tags.count("svg") == 3 and "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert not p.urls, p.urls
    assert "http://" not in page and "https://" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_content_is_escaped_and_complete() -> None:
    page = render_html(rich_report())
    assert "slow&lt;b&gt;&amp;" in page and "slow<b>&" not in page
    assert "load was &lt;high&gt;" in page
    assert "connection refused" in page and "band 6.00-13.0" in page and "emulated" in page
    assert "noisy" in page and "load average 5.00" in page
    assert "baseline → onnx-fp32 <span class='muted'>(export:onnx)</span> → onnx-int8" in page
    assert "<strong>device</strong> wins" in page and "<td>onnx-int8</td>" in page
    shadow = page.split('<section id="shadow">')[1].split("</section>")[0]
    assert shadow.count("Shadow tests") == 1 and "onnx-int8 vs onnx-fp32 &lt;PASS&gt;" in shadow
    assert "<td>2 of 400</td>" in shadow
    assert "confusion matrix: onnx-fp32" in page and "macro_f1" in page
    assert "avx512_vnni" in page and "onnxruntime 1.32.0" in page
    # Every artifact and timing setting is in the distribution plot's labels.
    assert page.count("local, 1 thread, batch 8") >= 1 and "onnx-int8" in page


def test_pareto_front() -> None:
    # (latency, accuracy): the 3.0/0.96 point is beaten by 2.0/0.97 on both.
    pts = [(2.0, 0.97), (0.8, 0.965), (3.0, 0.96), (0.8, 0.95)]
    assert pareto_front(pts) == [1, 0]
    assert pareto_front([(1.0, 0.9)]) == [0]


def test_minimal_report_renders() -> None:
    page = render_html(Report(recipe={"name": "empty"}, created="now", status="failed", error="step 01 failed"))
    assert "step 01 failed" in page and "No benchmark results" in page and "<svg" not in page


def test_markdown_subset() -> None:
    out = markdown_to_html("# T\n\ntext with `code`\nand more\n\n- a\n- **b**\n\n| x | y |\n|---|---|\n| 1 | <2> |")
    assert out.startswith("<h2>T</h2>") and "<p>text with <code>code</code> and more</p>" in out
    assert "<ul><li>a</li><li><strong>b</strong></li></ul>" in out
    assert "<th>x</th>" in out and "<td>&lt;2&gt;</td>" in out


def _t(target: str, p50: float, batch: int = 1, threads: int = 1, how: str = "measured") -> TargetResult:
    return TargetResult(target=target, how=how, device="x", threads=threads, batch=batch,
                        latency_ms=summarize([p50] * 20, threads=threads, batch=batch, how=how))


def test_html_lineage_walks_through_torch_steps_and_estimates_show_no_runs() -> None:
    from bench.html import render_html

    steps = [StepReport(index=1, kind="prune", name="01-prune", config={}, input="baseline", output="pruned"),
             StepReport(index=2, kind="qat", name="02-qat", config={}, input="pruned", output="qat")]
    art = ArtifactReport(name="onnx-int8", format="onnx", path=None, size_bytes=1000, parent="qat", step="export:onnx",
                         targets=[_t("estimate:rpi4", 0.2, how="estimated")])
    html = render_html(Report(recipe={"name": "t"}, created="now", steps=steps, artifacts=[art]))
    lineage = html[html.index('class="lineage"'):]
    chain = lineage[:lineage.index("</li>")]
    assert "baseline → pruned" in chain
    for name, step in (("pruned", "01-prune"), ("qat", "02-qat"), ("onnx-int8", "export:onnx")):
        assert f"{name} <span class='muted'>({step})</span>" in chain
    assert chain.index("baseline") < chain.index("pruned") < chain.index("qat") < chain.index("onnx-int8")
    latency = html[html.index('id="latency"'):]
    assert "0 runs" not in latency and "estimated: no timed runs" in latency


def test_the_summary_leads_and_the_size_axis_speaks_the_bars_unit() -> None:
    from bench.summary import summary_section

    r = rich_report()
    r.summary = summary_section(r)
    page = render_html(r)
    first = page.index("<section")
    assert page.index('<section id="summary"') == first  # the answer before everything else
    assert "ship onnx-int8" in page
    size_svg = page[page.index('class="plot-size"'):]
    size_svg = size_svg[:size_svg.index("</svg>")]
    assert "size (kB)" in size_svg and "size (MB)" not in size_svg  # every file is under 1 MB, labelled in kB


def test_labels_of_close_points_do_not_overlap() -> None:
    from bench.html import place_label

    placed: list[tuple[float, float, float, float]] = []
    spots = [place_label(100.0, 100.0 + 2 * i, f"artifact-{i}", placed) for i in range(6)]
    assert len(set(spots)) == 6
    for i, a in enumerate(placed):
        for b in placed[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
