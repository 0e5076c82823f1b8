"""The report schema round trip and its Markdown rendering."""

from __future__ import annotations


from bench.latency import summarize
from bench.report import render_markdown
from compress.core.report_schema import ArtifactReport, Report, TargetResult


def test_report_round_trip_and_markdown() -> None:
    stats = summarize([1.0, 1.1, 0.9], threads=1)
    r = Report(recipe={"name": "x"}, created="now", artifacts=[ArtifactReport(
        name="onnx-fp32", format="onnx", path="a.onnx", size_bytes=10, accuracy=0.9,
        targets=[TargetResult(target="local", how="measured", device="cpu", threads=1, latency_ms=stats)])])
    again = Report.model_validate_json(r.model_dump_json())
    t = again.artifacts[0].targets[0]
    assert t.latency_ms.p50 == stats.p50 and t.how == "measured"
    md = render_markdown(again)
    assert "onnx-fp32" in md and "measured" in md


def test_markdown_starts_with_the_summary() -> None:
    from bench.report import render_markdown
    from bench.summary import summary_section
    from tests.unit.bench.test_html import rich_report

    r = rich_report()
    r.summary = summary_section(r)
    md = render_markdown(r)
    assert md.index("## Summary") < md.index("## ") + 1 and "ship onnx-int8" in md
    assert md.index("## Summary") < md.index("## Artifacts")
