"""The Pareto front of measured trials, the best feasible one, and the closest miss.

Pure functions over trial outcomes (``compress.search.trial``): no Optuna, no files.
"""

from __future__ import annotations

import math
from typing import Any


def value_of(outcome: dict[str, Any], metric: str) -> float | None:
    """A metric's measured value in an outcome, or None."""
    return ((outcome.get("metrics") or {}).get(metric) or {}).get("value")


def _key(outcome: dict[str, Any], objectives: dict[str, str]) -> tuple[float, ...] | None:
    """Objective values, each turned so that smaller is better; None when one is missing."""
    values = []
    for metric, direction in objectives.items():
        v = value_of(outcome, metric)
        if v is None:
            return None
        values.append(v if direction == "minimize" else -v)
    return tuple(values)


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (both: smaller is better)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(outcomes: list[dict[str, Any]], objectives: dict[str, str]) -> list[dict[str, Any]]:
    """The feasible outcomes no other feasible outcome dominates, ordered by the first objective.

    Outcomes with equal objective values are all kept (neither dominates the other).
    """
    scored = [(o, k) for o in outcomes if o.get("status") == "feasible"
              for k in [_key(o, objectives)] if k is not None]
    front = [(o, k) for o, k in scored if not any(dominates(k2, k) for _, k2 in scored)]
    front.sort(key=lambda ok: (ok[1], ok[0].get("number", 0)))
    return [o for o, _ in front]


def best(outcomes: list[dict[str, Any]], objectives: dict[str, str]) -> dict[str, Any] | None:
    """The feasible outcome best on the first objective (then the next ones, then the earlier trial)."""
    front = pareto_front(outcomes, objectives)
    return front[0] if front else None


def closest_miss(outcomes: list[dict[str, Any]], constraints: dict[str, float]) -> dict[str, Any] | None:
    """Which hard limit came closest to being met, by how much, in which trial.

    Only trials that met every other limit and passed their gate count for a limit (what
    stands between that trial and feasibility is that one limit); when none did, the trial
    with the smallest total relative miss over its missed limits. Relative misses are
    ``miss / limit`` (a limit of 0 counts the miss itself).
    """
    measured = [o for o in outcomes if o.get("status") in ("infeasible", "feasible") and o.get("violations")]
    candidates: list[tuple[float, dict[str, Any], str]] = []
    for o in measured:
        if o.get("reason", "").find("fidelity gate") >= 0:
            continue
        missed = {k: v for k, v in o["violations"].items() if v is not None and v > 0}
        if len(missed) == 1:
            name, miss = next(iter(missed.items()))
            candidates.append((_relative(miss, constraints[name]), o, name))
    if not candidates:
        totals = []
        for o in measured:
            missed = {k: v for k, v in o["violations"].items() if v is not None and v > 0}
            if missed:
                total = sum(_relative(v, constraints[k]) for k, v in missed.items())
                name = min(missed, key=lambda k: _relative(missed[k], constraints[k]))
                totals.append((total, o, name))
        candidates = totals
    if not candidates:
        return None
    rel, o, name = min(candidates, key=lambda c: (c[0], c[1].get("number", 0)))
    return {"constraint": name, "limit": constraints[name], "value": value_of(o, name),
            "miss": o["violations"][name], "relative_miss": rel, "trial": o.get("number"),
            "others_missed": sorted(k for k, v in o["violations"].items() if v is not None and v > 0 and k != name)}


def _relative(miss: float, limit: float) -> float:
    return miss / abs(limit) if limit else miss


def describe_miss(miss: dict[str, Any]) -> str:
    """``closest: latency_ms 6.2 vs limit 5 (24% over) in trial 3``."""
    name, limit, value = miss["constraint"], miss["limit"], miss["value"]
    word = "under" if name == "accuracy" else "over"
    pct = f" ({100 * miss['relative_miss']:.0f}% {word})" if limit else ""
    extra = f"; it also missed {', '.join(miss['others_missed'])}" if miss["others_missed"] else ""
    shown = "missing" if value is None or (isinstance(value, float) and math.isinf(value)) else f"{value:.4g}"
    return (f"closest: {name} {shown} vs limit {limit:g}, missed by {miss['miss']:.3g}{pct} "
            f"in trial {miss['trial']}{extra}")
