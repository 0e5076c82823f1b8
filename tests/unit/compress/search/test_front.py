"""The Pareto front, the best feasible trial, the closest miss, judging outcomes against limits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from compress.search.front import best, closest_miss, describe_miss, dominates, pareto_front
from compress.search.trial import judge, violations, wilson_ci

OBJ = {"latency_ms": "minimize", "accuracy": "maximize"}


def _o(n: int, lat: float, acc: float, status: str = "feasible", **extra) -> dict:
    return {"number": n, "status": status, "metrics": {"latency_ms": {"value": lat}, "accuracy": {"value": acc}},
            **extra}


def test_front_keeps_the_non_dominated_feasible_trials() -> None:
    trials = [_o(0, 1.0, 0.90), _o(1, 2.0, 0.95), _o(2, 2.5, 0.94), _o(3, 0.5, 0.99, "infeasible"),
              _o(4, 1.0, 0.90), {"number": 5, "status": "failed"}]
    front = pareto_front(trials, OBJ)
    assert [o["number"] for o in front] == [0, 4, 1]  # ties both kept; 2 dominated by 1; 3 infeasible
    assert best(trials, OBJ)["number"] == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 100), st.floats(0, 1), st.booleans()), min_size=0, max_size=25))
def test_front_properties(points) -> None:
    trials = [_o(i, lat, acc, "feasible" if ok else "infeasible") for i, (lat, acc, ok) in enumerate(points)]
    front = pareto_front(trials, OBJ)
    key = {o["number"]: (o["metrics"]["latency_ms"]["value"], -o["metrics"]["accuracy"]["value"]) for o in trials}
    feasible = [o for o in trials if o["status"] == "feasible"]
    for f in front:  # nothing feasible dominates a front member
        assert f["status"] == "feasible"
        assert not any(dominates(key[o["number"]], key[f["number"]]) for o in feasible)
    for o in feasible:  # every feasible trial off the front is dominated by one on it
        if o not in front:
            assert any(dominates(key[f["number"]], key[o["number"]]) for f in front)
    if feasible:
        fastest = min(key[o["number"]] for o in feasible)
        assert key[best(trials, OBJ)["number"]] == fastest


def test_judge_marks_limits_and_keeps_gate_failures() -> None:
    limits = {"accuracy_loss": 0.01, "latency_ms": 5.0, "accuracy": 0.9}
    o = _o(0, 6.0, 0.95)
    o["metrics"]["accuracy_loss"] = {"value": 0.02}
    o["status"] = "ok"
    judged = judge(o, limits)
    assert judged["status"] == "infeasible"
    assert "latency_ms 6 > limit 5" in judged["reason"] and "accuracy_loss 0.02 > limit 0.01" in judged["reason"]
    assert abs(judged["violations"]["accuracy"] + 0.05) < 1e-12  # met, by 0.05
    gate = {**_o(1, 1.0, 0.99), "status": "infeasible", "reason": "onnx-static fidelity gate: agreement"}
    gate["metrics"]["accuracy_loss"] = {"value": 0.0}
    assert judge(gate, limits)["reason"].startswith("onnx-static fidelity gate")
    ok = {**_o(2, 1.0, 0.99), "status": "ok"}
    ok["metrics"]["accuracy_loss"] = {"value": 0.001}
    assert judge(ok, limits)["status"] == "feasible"
    assert violations({"metrics": {}}, {"size_mb": 1})["size_mb"] == float("inf")


def test_closest_miss_prefers_a_trial_short_of_one_limit() -> None:
    limits = {"latency_ms": 5.0, "accuracy_loss": 0.01}
    a = {"number": 0, "status": "infeasible", "metrics": {"latency_ms": {"value": 6.0}},
         "violations": {"latency_ms": 1.0, "accuracy_loss": -0.005}}
    b = {"number": 1, "status": "infeasible", "metrics": {"accuracy_loss": {"value": 0.0105}},
         "violations": {"latency_ms": -1.0, "accuracy_loss": 0.0005}}
    c = {"number": 2, "status": "infeasible", "metrics": {"latency_ms": {"value": 5.1}},
         "violations": {"latency_ms": 0.1, "accuracy_loss": 0.5}}  # missed two limits
    miss = closest_miss([a, b, c], limits)
    assert miss["trial"] == 1 and miss["constraint"] == "accuracy_loss" and abs(miss["relative_miss"] - 0.05) < 1e-9
    text = describe_miss(miss)
    assert "accuracy_loss 0.0105 vs limit 0.01" in text and "5% over" in text and "trial 1" in text
    only_double = closest_miss([c], limits)
    assert only_double["trial"] == 2 and only_double["constraint"] == "latency_ms"
    assert "also missed accuracy_loss" in describe_miss(only_double)
    assert closest_miss([], limits) is None


def test_wilson_interval() -> None:
    lo, hi = wilson_ci(0.95, 359)
    assert 0.92 < lo < 0.95 < hi < 0.97
    assert abs(wilson_ci(1.0, 100)[1] - 1.0) < 1e-12 and wilson_ci(0.5, 0) == (0.5, 0.5)
