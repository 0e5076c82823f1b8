"""The study side of the search: telling outcomes, constraints the sampler sees, resuming a killed search."""

from __future__ import annotations

from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from compress.intake.search_spec import SearchSpec  # noqa: E402
from compress.search.driver import (  # noqa: E402
    INTERRUPTED,
    OUTCOME,
    _requeue_interrupted,
    log_line,
    open_study,
    outcomes_of,
    tell,
)

SPEC = SearchSpec(objectives={"latency_ms": "minimize", "accuracy": "maximize"},
                  constraints={"accuracy_loss": 0.01}, space={"prune.ratio": [0.0, 0.25, 0.5]}, sampler="grid")


def _measured(number: int, lat: float, acc: float, loss: float, **extra) -> dict:
    return {"number": number, "params": {}, "status": "ok", **extra,
            "metrics": {"latency_ms": {"value": lat, "ci95": [lat * 0.9, lat * 1.1], "noisy": False},
                        "accuracy": {"value": acc}, "accuracy_loss": {"value": loss}}}


def test_tell_records_values_constraints_and_failures(tmp_path: Path) -> None:
    study = open_study(SPEC, tmp_path)
    t0, t1, t2 = study.ask(), study.ask(), study.ask()
    tell(study, t0, _measured(t0.number, 1.0, 0.99, 0.005), SPEC)
    tell(study, t1, _measured(t1.number, 0.5, 0.95, 0.05), SPEC)
    tell(study, t2, {"number": t2.number, "params": {}, "status": "failed", "reason": "step prune failed"}, SPEC)
    trials = study.get_trials()
    assert trials[0].values == [1.0, 0.99] and trials[0].constraints == {"accuracy_loss": pytest.approx(-0.005),
                                                                          "fidelity_gate": 0.0}
    assert trials[1].constraints["accuracy_loss"] == pytest.approx(0.04)
    assert trials[2].state.name == "FAIL" and trials[2].user_attrs[OUTCOME]["reason"] == "step prune failed"
    statuses = [o["status"] for o in outcomes_of(study)]
    assert statuses == ["feasible", "infeasible", "failed"]
    assert "infeasible: accuracy_loss 0.05 > limit 0.01" in log_line(outcomes_of(study)[1])


def test_a_killed_search_resumes_with_the_same_parameters(tmp_path: Path) -> None:
    tpe = SPEC.model_copy(update={"sampler": "tpe"})
    study = open_study(tpe, tmp_path)
    done = study.ask()
    done_params = {"prune.ratio": done.suggest_categorical("prune.ratio", [0.0, 0.25, 0.5])}
    done_out = _measured(done.number, 1.0, 0.99, 0.0)
    done_out["params"] = done_params
    tell(study, done, done_out, tpe)
    running = study.ask()  # the process that ran it was killed: the trial stays RUNNING in search.db
    params = {"prune.ratio": running.suggest_categorical("prune.ratio", [0.0, 0.25, 0.5])}
    again = open_study(tpe, tmp_path)  # a new process opens the same SQLite study
    assert _requeue_interrupted(again) == 1
    assert [o["number"] for o in outcomes_of(again)] == [done.number]  # the interrupted one does not count
    assert again.get_trials()[running.number].user_attrs[OUTCOME]["reason"] == INTERRUPTED
    retry = again.ask()
    assert retry.suggest_categorical("prune.ratio", [0.0, 0.25, 0.5]) == params["prune.ratio"]
    assert again.get_trials()[done.number].values == [1.0, 0.99]  # the finished trial is untouched
    assert (tmp_path / "search.db").is_file()


def test_grid_enqueues_every_combination_once(tmp_path: Path) -> None:
    study = open_study(SPEC, tmp_path)
    seen = []
    for _ in range(3):
        t = study.ask()
        seen.append(t.suggest_categorical("prune.ratio", [0.0, 0.25, 0.5]))
        tell(study, t, _measured(t.number, 1.0, 0.99, 0.0), SPEC)
    assert sorted(seen) == [0.0, 0.25, 0.5]
    assert len(open_study(SPEC, tmp_path).get_trials()) == 3  # reopening enqueues nothing more
