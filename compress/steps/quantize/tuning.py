"""Accuracy-aware search for a quantized model within ``tolerable_loss`` of the float model.

The search tries, in order of expected speed (fastest first):

1. the plan as configured (full int8);
2. the other calibration methods, then the other weight granularity (per-tensor or
   per-channel), still full int8;
3. rescaling moves on the float graph that keep the function and full int8 speed
   (:mod:`compress.steps.quantize.equalize`): cross-layer equalization, SmoothQuant, both;
4. keeping nodes in float, ranked by a per-node sensitivity analysis of the best full-int8
   model: the most damaging units one more per trial, then, when those are spent, a
   bisection over the cumulative exclusion of every quantizable node in sensitivity order
   (the smallest prefix that meets the goal, in log2(n) trials instead of n).

It stops at the first phase that meets the goal and returns the fastest model of those that
meet it, or the most accurate one when none does. Every trial is recorded (configuration,
accuracy, loss, latency, size, and what a move changed).

Sensitivity (in the spirit of onnxruntime's ``qdq_loss_debug``): both models run with every
intermediate tensor added as an output; for each node of the float model, the signal to
quantization noise ratio (SQNR, dB) of its output in the quantized model is compared with
that of its inputs. The drop across the node is the noise this node adds (its weights, the
quantization of its inputs, its own arithmetic). A tensor whose outliers stretch the
quantization range shows up at its consumer, whose output loses the small values, even
though the tensor's own SQNR (dominated by the outliers) looks fine; the tensor's producer,
which is just as responsible, may not rank at all: that is why the ranked units are
followed by the bisection over every quantizable node. A node is excluded together with the
non-compute nodes that produce its inputs (Mul, Add, Relu...), so that the damaging tensor is
left unquantized on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.host import measure_latency_ms

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# SQNR of ideal 8-bit uniform quantization of a full-scale signal (6.02 * 8 + 1.76 dB). Above
# it a difference is not quantization noise, so a node fed by exact inputs (the first layer,
# an embedding lookup) is scored against this ceiling, not against "no noise at all".
SQNR_CEILING_DB = 50.0
CALIBRATIONS = ("minmax", "entropy", "percentile")
# Rescaling moves, tried in this order (each alone, then together).
MOVES: tuple[tuple[str, ...], ...] = (("cle",), ("smoothquant",), ("cle", "smoothquant"))
# Ranked units excluded one per trial before the search bisects over every quantizable node.
SINGLE_EXCLUSIONS = 3


@dataclass(frozen=True)
class Plan:
    """One quantization configuration."""

    method: str
    activation_type: str | None
    weight_type: str | None
    per_channel: bool
    calibration: str | None
    reduce_range: bool = False
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] | None = None  # operator types to quantize; None: every supported one
    equalize: tuple[str, ...] = ()  # rescaling moves applied to the float model first ("cle", "smoothquant")

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "activation_type": self.activation_type, "weight_type": self.weight_type,
                "per_channel": self.per_channel, "calibration": self.calibration,
                "reduce_range": self.reduce_range, "exclude": list(self.exclude),
                "op_types": list(self.op_types) if self.op_types else "all", "equalize": list(self.equalize)}


@dataclass
class Trial:
    """A quantized candidate and how it measured."""

    index: int
    plan: Plan
    path: Path
    accuracy: float | None = None
    loss: float | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    goal_met: bool = False
    phase: str = ""
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {"index": self.index, "phase": self.phase, "config": self.plan.as_dict(), "accuracy": self.accuracy,
             "loss": self.loss, "latency_ms": self.latency_ms, "size_bytes": self.size_bytes,
             "goal_met": self.goal_met}
        if self.notes:
            d["notes"] = self.notes
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class Goal:
    """``tolerable_loss`` against the float model's accuracy, absolute or relative."""

    baseline: float
    tolerable_loss: float
    kind: str = "absolute"

    @property
    def allowed(self) -> float:
        return self.tolerable_loss * abs(self.baseline) if self.kind == "relative" else self.tolerable_loss

    def loss(self, accuracy: float) -> float:
        return self.baseline - accuracy

    def met(self, accuracy: float) -> bool:
        # a hair of slack so that a loss equal to the allowance (up to float rounding) counts
        return self.loss(accuracy) <= self.allowed + 1e-9


def _sqnr(ref: list[np.ndarray], test: list[np.ndarray]) -> float:
    a = np.concatenate([r.reshape(-1) for r in ref]).astype(np.float64)
    b = np.concatenate([t.reshape(-1) for t in test]).astype(np.float64)
    if a.shape != b.shape:
        return math.nan
    noise = float(np.linalg.norm(a - b))
    signal = float(np.linalg.norm(a))
    if noise == 0.0:
        return 120.0  # identical: cap, so differences of differences stay finite
    return 20 * math.log10(max(signal, 1e-30) / noise)


def collect(model_path: Path, work: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Every float intermediate tensor of a model, over the given inputs."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    aug = work / f"{model_path.stem}.augmented.onnx"
    modify_model_output_intermediate_tensors(str(model_path), str(aug))

    class Feeds:
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def __iter__(self):  # collect_activations iterates the reader
            return iter(feeds)

    try:
        return collect_activations(str(aug), Feeds())
    finally:
        aug.unlink(missing_ok=True)


FOLDED_ACTIVATIONS = ("Relu", "Clip")


def node_sensitivity(float_model: Any, float_acts: dict[str, list[np.ndarray]],
                     quant_acts: dict[str, list[np.ndarray]], quant_nodes: set[str],
                     op_types: tuple[str, ...] | None = None) -> list[tuple[str, float]]:
    """Nodes of the float model ranked by the SQNR they lose (dB), most damaging first.

    Only nodes of ``op_types`` (when given: the others are not quantized, so keeping them in
    float changes nothing) are ranked. Relu/Clip nodes missing from the quantized model
    (``quant_nodes``) are skipped: the quantizer folds them into the quantization range, and
    their tensor names then hold other values.
    """
    scores = []
    graph_inputs = {i.name for i in float_model.graph.input}
    for node in float_model.graph.node:
        if op_types is not None and node.op_type not in op_types:
            continue
        if node.op_type in FOLDED_ACTIVATIONS and node.name not in quant_nodes:
            continue
        outs = [o for o in node.output if o in float_acts and o in quant_acts]
        if not outs:
            continue
        out_sqnr = min(min(_sqnr(float_acts[o], quant_acts[o]) for o in outs), SQNR_CEILING_DB)
        ins = [i for i in node.input if i in float_acts and i in quant_acts and i not in graph_inputs]
        in_sqnr = min(min((_sqnr(float_acts[i], quant_acts[i]) for i in ins), default=SQNR_CEILING_DB),
                      SQNR_CEILING_DB)
        if math.isnan(out_sqnr) or math.isnan(in_sqnr):
            continue
        scores.append((node.name, in_sqnr - out_sqnr))
    scores.sort(key=lambda s: -s[1])
    return scores


def exclusion_unit(float_model: Any, node_name: str) -> list[str]:
    """The node plus the non-compute nodes producing its activation inputs."""
    nodes = {n.name: n for n in float_model.graph.node}
    producers = {o: n for n in float_model.graph.node for o in n.output}
    node = nodes[node_name]
    unit = [node_name]
    for i in node.input:
        p = producers.get(i)
        if p is not None and p.op_type not in COMPUTE_OPS and p.name and p.name not in unit:
            unit.append(p.name)
    return unit


@dataclass
class Search:
    """State and callbacks of one tuning run.

    Args:
        base: The configured plan.
        quantize: Writes the model of a plan to a path; may return notes for the trial
            (what a rescaling move changed).
        evaluate: Task accuracy of a model file (higher is better).
        goal: The accuracy goal.
        work: Folder for trial models.
        feed: One input for the latency ranking.
        sensitivity: For a quantized model file and its plan, every quantizable node of the
            float model with its exclusion unit and SQNR drop (dB; NaN when unscored), most
            damaging first.
        max_trials: Upper bound on quantized candidates.
        log: Progress lines.
        moves: Rescaling moves to try (see :data:`MOVES`); empty to skip the phase.
        applicable: Whether a move changes the model at all (a move that does not is skipped
            without spending a trial).
    """

    base: Plan
    quantize: Callable[[Plan, Path], dict[str, Any] | None]
    evaluate: Callable[[Path], float]
    goal: Goal
    work: Path
    feed: dict[str, np.ndarray]
    sensitivity: Callable[[Path, Plan], list[tuple[str, list[str], float]]] | None
    max_trials: int
    log: Callable[[str], None]
    moves: tuple[tuple[str, ...], ...] = ()
    applicable: Callable[[tuple[str, ...]], bool] | None = None
    trials: list[Trial] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)

    def run_trial(self, plan: Plan, phase: str) -> Trial:
        path = self.work / f"trial-{len(self.trials) + 1:02d}.onnx"
        trial = Trial(index=len(self.trials) + 1, plan=plan, path=path, phase=phase)
        self.trials.append(trial)
        try:
            notes = self.quantize(plan, path)
            if isinstance(notes, dict):
                trial.notes = notes
            trial.size_bytes = path.stat().st_size
            trial.accuracy = float(self.evaluate(path))
            trial.loss = self.goal.loss(trial.accuracy)
            trial.goal_met = self.goal.met(trial.accuracy)
            trial.latency_ms = measure_latency_ms(path, self.feed)
        except Exception as e:  # noqa: BLE001  one failing configuration must not end the search
            trial.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.log(f"  trial {trial.index} ({phase}): {describe(plan)} -> "
                 + (f"accuracy {trial.accuracy:.4f}, loss {trial.loss:+.4f}, {trial.latency_ms:.3f} ms"
                    + (" goal met" if trial.goal_met else "") if trial.error is None else f"failed: {trial.error}"))
        return trial

    def budget(self) -> bool:
        return len(self.trials) < self.max_trials

    def met(self) -> list[Trial]:
        return [t for t in self.trials if t.goal_met and t.error is None]

    def best_full(self) -> Trial | None:
        ok = [t for t in self.trials if t.error is None and t.accuracy is not None and not t.plan.exclude]
        return max(ok, key=lambda t: t.accuracy) if ok else None

    def run(self) -> Trial:
        self.run_trial(self.base, "configured")
        if not self.met() and self.base.calibration is not None:
            for calib in CALIBRATIONS:
                if calib != self.base.calibration and self.budget():
                    self.run_trial(replace(self.base, calibration=calib), "calibration")
                    if self.met():
                        break
        if not self.met() and self.budget():
            best = self.best_full()
            plan = best.plan if best is not None else self.base
            self.run_trial(replace(plan, per_channel=not plan.per_channel), "granularity")
        if not self.met() and self.moves:
            self.move_phase()
        if not self.met() and self.budget() and self.sensitivity is not None:
            self.exclude_phase()
        return self.choose()

    def move_phase(self) -> None:
        """Rescaling moves on the best full-int8 configuration, each alone, then together."""
        best = self.best_full()
        plan = best.plan if best is not None else self.base
        failed: set[str] = set()
        for move in self.moves:
            if not self.budget() or self.met():
                return
            if len(move) > 1 and (failed & set(move)):
                continue  # a combination with a move that failed or did nothing on its own
            try:
                useful = self.applicable is None or self.applicable(move)
            except Exception as e:  # noqa: BLE001  a move that cannot be applied is skipped, with the reason
                self.skipped.append({"move": "+".join(move), "reason": f"{type(e).__name__}: {e}"[:300]})
                self.log(f"  {'+'.join(move)} skipped: {type(e).__name__}: {e}")
                failed.update(move)
                continue
            if not useful:
                self.skipped.append({"move": "+".join(move), "reason": "changes nothing in this model"})
                self.log(f"  {'+'.join(move)} skipped: it changes nothing in this model")
                failed.update(move)
                continue
            trial = self.run_trial(replace(plan, equalize=move), "+".join(move))
            if trial.error is not None or trial.notes.get("changed") is False:
                failed.update(move)

    def exclude_phase(self) -> None:
        best = self.best_full()
        if best is None:
            return
        try:
            ranked = self.sensitivity(best.path, best.plan)
        except Exception as e:  # noqa: BLE001  (the search goes on without exclusions)
            self.log(f"  sensitivity analysis failed: {type(e).__name__}: {e}")
            return
        self.ranking = [{"node": n, "unit": u, "sqnr_drop_db": None if math.isnan(s) else round(s, 2)}
                        for n, u, s in ranked[:20]]
        positive = [r for r in ranked if not math.isnan(r[2]) and r[2] > 0]
        if positive:
            self.log("  most sensitive: " + ", ".join(f"{n} ({s:.1f} dB)" for n, _, s in positive[:5]))
        base = tuple(best.plan.exclude)
        # prefixes[k]: the nodes excluded when the first k units in sensitivity order are
        prefixes: list[tuple[str, ...]] = [base]
        for _node, unit, _score in ranked:
            new = tuple(u for u in unit if u not in prefixes[-1])
            if new:
                prefixes.append(prefixes[-1] + new)
        tried: set[tuple[str, ...]] = set()

        def attempt(k: int, phase: str) -> bool:
            tried.add(prefixes[k])
            return self.run_trial(replace(best.plan, exclude=prefixes[k]), phase).goal_met

        singles = min(SINGLE_EXCLUSIONS, len(positive), len(prefixes) - 1)
        for k in range(1, singles + 1):
            if not self.budget():
                return
            if attempt(k, "exclude"):
                return
        lo, hi = singles, len(prefixes) - 1
        if hi <= lo or not self.budget():
            return
        # Bisection over cumulative exclusion: the largest prefix first (does exclusion help at all?)
        if not attempt(hi, "exclude-bisect"):
            return
        while hi - lo > 1 and self.budget():
            mid = (lo + hi) // 2
            if prefixes[mid] in tried:
                break
            if attempt(mid, "exclude-bisect"):
                hi = mid
            else:
                lo = mid

    def choose(self) -> Trial:
        met = self.met()
        if met:
            return min(met, key=lambda t: t.latency_ms if t.latency_ms is not None else math.inf)
        ok = [t for t in self.trials if t.error is None and t.accuracy is not None]
        if not ok:
            errors = "; ".join(f"trial {t.index}: {t.error}" for t in self.trials)
            raise RuntimeError(f"every quantization trial failed ({errors})")
        return max(ok, key=lambda t: t.accuracy)


def describe(plan: Plan) -> str:
    parts = [plan.method]
    if plan.activation_type:
        act = "u8" if plan.activation_type == "uint8" else "s8"
        parts.append(act + ("u8" if plan.weight_type == "uint8" else "s8"))
    if plan.calibration:
        parts.append(plan.calibration)
    if plan.method in ("static", "dynamic"):
        parts.append("per-channel" if plan.per_channel else "per-tensor")
    if plan.equalize:
        parts.append("+".join(plan.equalize))
    if plan.exclude:
        parts.append(f"{len(plan.exclude)} nodes float")
    return " ".join(parts)


def tune(plan: Plan, config: Any, ctx: Any, notes: Any, pre: Path, names: list[str], batch: int | None,
         calib: list[dict[str, np.ndarray]] | None, work: Path) -> Trial:
    """The quantize step's accuracy-aware search; records every trial in ``notes.details``.

    Args:
        plan: The configured plan.
        config: The step's ``QuantizeConfig``.
        ctx: The step's ``StepContext`` (its ``evaluate`` scores each trial).
        notes: The step's :class:`compress.core.step.Notes` (details, advisories).
        pre: The pre-processed float model.
        names: The model's input names.
        batch: Its fixed batch size, if any.
        calib: Calibration feeds (static quantization).
        work: The step's scratch folder.

    Returns:
        The chosen trial.
    """
    import onnx

    from compress.core.types import Artifact
    from compress.core.errors import StepError
    from compress.steps.quantize.equalize import apply_moves
    from compress.steps.quantize.step import quantize_plan
    from bench.runtime import feeds_of

    def evaluate(path: Path) -> float:
        acc = ctx.evaluate(Artifact(name=path.stem, format="onnx", path=path)).get("accuracy")
        if acc is None:
            raise StepError(ctx.step_name, "the task has no accuracy metric to tune against")
        return float(acc)

    baseline = evaluate(pre)
    goal = Goal(baseline=baseline, tolerable_loss=float(config.tolerable_loss or 0.0), kind=config.loss_kind)
    ctx.log(f"  tuning: float accuracy {baseline:.4f}, allowed loss {goal.allowed:.4f} ({config.loss_kind})")
    sens_x = ctx.data.calib.x if ctx.data is not None else None
    sens_feeds = feeds_of(sens_x, names, batch, 16) if sens_x is not None else []
    sources: dict[tuple[str, ...], tuple[Path, dict[str, Any]]] = {(): (pre, {})}

    def source_for(moves: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
        """The float model rewritten by the rescaling moves (made once per combination)."""
        if moves not in sources:
            path = work / f"float-{'-'.join(moves)}.onnx"
            sources[moves] = (path, apply_moves(pre, path, moves, calib or sens_feeds, work))
        return sources[moves]

    def run_plan(p: Plan, dst: Path) -> dict[str, Any] | None:
        src, notes = source_for(p.equalize)
        quantize_plan(p, src, dst, calib)
        return notes or None

    float_acts: dict[Path, dict[str, Any]] = {}

    def sensitivity(qpath: Path, p: Plan) -> list[tuple[str, list[str], float]]:
        src = source_for(p.equalize)[0]
        if src not in float_acts:
            float_acts[src] = collect(src, work, sens_feeds)
        float_model = onnx.load(str(src))
        quant_acts = collect(qpath, work, sens_feeds)
        quant_nodes = {n.name for n in onnx.load(str(qpath), load_external_data=False).graph.node}
        ranked = node_sensitivity(float_model, float_acts[src], quant_acts, quant_nodes, plan.op_types)
        # every quantizable compute node takes part in the bisection, scored or not
        seen = {n for n, _ in ranked}
        ops = [op for op in COMPUTE_OPS if plan.op_types is None or op in plan.op_types]
        rest = [(n.name, float("nan")) for n in float_model.graph.node if n.op_type in ops and n.name not in seen]
        return [(n, exclusion_unit(float_model, n), s) for n, s in ranked + rest if n]

    feed = feeds_of(ctx.data.eval.x if ctx.data is not None else [], names, batch, 1, step=1)[0]
    static = plan.method == "static"
    search = Search(base=plan, quantize=run_plan, evaluate=evaluate, goal=goal, work=work, feed=feed,
                    sensitivity=sensitivity if plan.method in ("static", "dynamic") else None,
                    max_trials=config.max_trials, log=ctx.log, moves=MOVES if static else (),
                    applicable=lambda moves: bool(source_for(moves)[1].get("changed")))
    chosen = search.run()
    met = chosen.goal_met
    notes.details.update({
        "baseline_accuracy": baseline, "tolerable_loss": config.tolerable_loss, "loss_kind": config.loss_kind,
        "allowed_loss": goal.allowed, "goal_met": met, "require_goal": config.require_goal,
        "chosen_trial": chosen.index, "trials": [t.as_dict() for t in search.trials],
        "sensitivity": search.ranking, "moves_skipped": search.skipped,
    })
    if met:
        ctx.log(f"  goal met by trial {chosen.index}: {describe(chosen.plan)}, loss {chosen.loss:+.4f}")
    else:
        msg = (f"no trial met tolerable_loss {config.tolerable_loss} ({config.loss_kind}) in {len(search.trials)} "
               f"trials; kept the most accurate (trial {chosen.index}: accuracy {chosen.accuracy:.4f}, loss "
               f"{chosen.loss:+.4f}). Raise max_trials or tolerable_loss, or try quantization-aware training (qat)")
        notes.advise("tuning_goal_unmet", msg, severity="error" if config.require_goal else "warning")
    return chosen
