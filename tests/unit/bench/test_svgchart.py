"""The report's SVG charts: ticks, scales, and a page rendered without a plotting library."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.svgchart import Axis, Chart, circle, nice_ticks, tick_label


@pytest.mark.parametrize(("lo", "hi", "expected"), [(0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                                                    (0.93, 0.99, [0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]),
                                                    (3.0, 47.0, [10.0, 20.0, 30.0, 40.0])])
def test_ticks_fall_on_round_numbers_inside_the_range(lo: float, hi: float, expected: list[float]) -> None:
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def test_axes_map_values_to_pixels_linear_and_log() -> None:
    lin = Axis(0.0, 10.0, start=100.0, end=200.0)
    assert (lin(0.0), lin(5.0), lin(10.0)) == (100.0, 150.0, 200.0)
    log = Axis(0.1, 10.0, log=True, start=0.0, end=100.0)
    assert log(1.0) == pytest.approx(50.0) and log.ticks()[:3] == [0.1, 0.2, 0.5]
    assert Axis(2.0, 2.0).hi > Axis(2.0, 2.0).lo  # a single value still gets an axis
    assert [tick_label(v) for v in (0, 0.25, 2e5)] == ["0", "0.25", "2e5"]


def test_a_chart_is_one_svg_element_with_its_legend_and_escaped_text() -> None:
    chart = Chart(300, 200, Axis(0.0, 1.0), Axis(0.0, 1.0))
    chart.axes("x <ms>", "y")
    chart.add(circle(chart.x(0.5), chart.y(0.5), 3, "#000"), (circle(0, 0, 3, "#000"), "a & b"))
    svg = chart.render("demo", "a <title>")
    assert svg.startswith('<svg class="plot-demo"') and svg.count("<svg") == 1 and svg.endswith("</svg>")
    assert "a &amp; b" in svg and "x &lt;ms&gt;" in svg and "http" not in svg


def test_the_html_report_needs_no_plotting_library() -> None:
    code = ("import sys; from tests.unit.bench.test_html import rich_report; from bench.html import render_html; "
            "page = render_html(rich_report()); print(page.count('<svg'), 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["3", "False"]
