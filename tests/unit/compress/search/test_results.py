"""The search page: trials and the front drawn as inline SVG, limits marked, no script or image file."""

from __future__ import annotations

from compress.intake.search_spec import SearchSpec
from compress.search.results import html_page


def _o(n: int, lat: float, acc: float, status: str = "feasible") -> dict:
    return {"number": n, "status": status, "params": {"prune.ratio": 0.1 * n}, "reason": "accuracy_loss",
            "metrics": {"latency_ms": {"value": lat}, "accuracy": {"value": acc}}}


def test_the_page_draws_every_trial_the_front_and_the_limit() -> None:
    spec = SearchSpec.model_validate({"space": {"prune.ratio": {"low": 0.0, "high": 0.5}},
                                      "constraints": {"latency_ms": 2.0}})
    outcomes = [_o(0, 1.0, 0.90), _o(1, 2.5, 0.95, "infeasible"), _o(2, 0.8, 0.80)]
    page = html_page(outcomes, spec, {"front": [0, 2], "best": 0, "closest_miss_text": None})
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert "<title>trial 0:" in svg and "<title>trial 2:" in svg and svg.count("<circle") == 3  # + the legend
    assert "Pareto front" in svg and "infeasible" in svg and "limit" in svg
    assert "<script" not in page and "data:image" not in page and "Best feasible trial: 0" in page


def test_no_trial_yet_is_said_not_drawn() -> None:
    spec = SearchSpec.model_validate({"space": {"prune.ratio": {"low": 0.0, "high": 0.5}}})
    page = html_page([], spec, {"front": [], "best": None, "closest_miss_text": "none ran"})
    assert "No trial has both values" in page and "No trial met every limit" in page
