"""``quantize: {engine: inc}``: Intel Neural Compressor 3.x ``autotune`` on the torch model.

The torch model is captured with ``neural_compressor.torch.export.export`` (PT2E), tuned
with ``StaticQuantConfig`` candidates against ``tolerable_loss`` on the eval split,
calibrated on the recipe's calibration samples, and the result exported to ONNX (QDQ) like
any other model. Only static quantization: neural-compressor 3.10's ``DynamicQuantConfig``
collapses accuracy and ``RTNConfig`` needs accelerate (measured; see
``/work/shared/notes/measured-facts.md``).

The goal is verified on the exported ONNX artifact as onnxruntime runs it on this CPU, not
on the torch model autotune scored: ``goal_met`` is the artifact's. On an x86 CPU without
VNNI the candidates use int8 activations (s8s8): neural-compressor's uint8 activations with
full-range int8 weights saturate in onnxruntime's u8s8 kernels there, and it has no 7-bit
weight option.
"""

from __future__ import annotations

from typing import Any

from compress.core.types import Artifact
from compress.core.step import Notes, StepContext
from compress.core.errors import MissingDependencyError, StepError
from compress.steps.quantize.config import QuantizeConfig

INC_HINT = 'pip install "edgepack[inc]"   (neural-compressor[pt] 3.x)'


def _import_inc() -> dict[str, Any]:
    try:
        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import StaticQuantConfig, TuningConfig, autotune
    except ImportError as e:
        raise MissingDependencyError("neural-compressor", "quantize with engine: inc", INC_HINT) from e
    return {"export": export, "StaticQuantConfig": StaticQuantConfig, "TuningConfig": TuningConfig,
            "autotune": autotune}


def quantize_inc(artifact: Artifact, config: QuantizeConfig, ctx: StepContext, cpu: Any, notes: Notes) -> Artifact:
    """Tune and quantize the torch model with neural-compressor, then export it to ONNX.

    Args:
        artifact: The torch model.
        config: The step's configuration (``engine: inc``).
        ctx: The step context.
        cpu: The target CPU's :class:`compress.core.env.CpuFeatures` (detected when None).
        notes: The step's details and advisories.
    """
    from compress.core.env import detect_cpu

    cpu = cpu or detect_cpu(ctx.target_arch if config.target == "auto" else config.target)
    inc = _import_inc()
    if artifact.format != "torch":
        raise StepError(ctx.step_name, "engine: inc quantizes a torch model; use engine: ort for ONNX models")
    if ctx.data is None:
        raise StepError(ctx.step_name, "engine: inc calibrates on data: add a data section")
    import torch

    from compress.intake.models import example_inputs, inputs_from_split
    from export.onnx import export_module_to_onnx

    specs = ctx.recipe.model.input_specs()
    example = tuple(example_inputs(specs, batch=2))
    n_calib = min(config.calibration_samples or len(ctx.data.calib), len(ctx.data.calib))
    calib = inputs_from_split(ctx.data.calib.x, n_calib)

    def run_fn(model: Any) -> None:
        with torch.no_grad():
            for i in range(0, n_calib, 8):
                model(*[t[i : i + 8] for t in calib])

    trials: list[dict[str, Any]] = []

    def eval_fn(model: Any) -> float:
        acc = float(ctx.evaluate(model).get("accuracy") or 0.0)
        trials.append({"index": len(trials), "accuracy": acc})
        return acc

    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        exported = inc["export"](artifact.module, example, dynamic_shapes=tuple({0: batch} for _ in specs))
    except Exception as e:
        raise StepError(ctx.step_name, f"neural-compressor could not capture the model: {type(e).__name__}: {e}") from e
    act_dtype = "int8" if cpu.u8s8_saturates else "uint8"
    candidates = [inc["StaticQuantConfig"](act_dtype=act_dtype,
                                           w_granularity="per_channel" if config.per_channel else "per_tensor"),
                  inc["StaticQuantConfig"](act_dtype=act_dtype,
                                           w_granularity="per_tensor" if config.per_channel else "per_channel")]
    tolerable = config.tolerable_loss if config.tolerable_loss is not None else 0.01
    tune_cfg = inc["TuningConfig"](config_set=candidates, tolerable_loss=tolerable, max_trials=config.max_trials)
    ctx.log(f"  neural-compressor autotune: {len(candidates)} candidate configs, tolerable_loss {tolerable}")
    try:
        q_model = inc["autotune"](exported, tune_cfg, eval_fn=eval_fn, run_fn=run_fn, example_inputs=example)
    except Exception as e:
        raise StepError(ctx.step_name, f"neural-compressor autotune failed: {type(e).__name__}: {e}") from e
    baseline = trials[0]["accuracy"] if trials else None
    notes.details.update({"engine": "inc", "trials": trials[1:], "baseline_accuracy": baseline,
                        "activation_type": act_dtype, "cpu": cpu.as_dict(), "require_goal": config.require_goal})
    if q_model is None:
        notes.details["goal_met"] = False
        raise StepError(ctx.step_name, f"neural-compressor found no configuration within tolerable_loss {tolerable}")
    from compress.core.fileio import atomic_write_with
    from compress.intake.models import set_mode

    set_mode(q_model, False)
    dest = ctx.step_dir / "model.onnx"
    raw = ctx.step_dir / "exported.onnx"
    try:
        export_module_to_onnx(q_model, specs, raw)
    except Exception as e:
        raise StepError(ctx.step_name, f"exporting the quantized model to ONNX failed: {type(e).__name__}: {e}") from e
    import onnx

    model = onnx.load(str(raw))
    folded = fold_weight_quantize(model)
    atomic_write_with(dest, lambda tmp: onnx.save(model, str(tmp)))
    raw.unlink()
    notes.details["folded_weight_quantizers"] = folded
    name = config.name or "onnx-inc-static"
    art = Artifact(name=name, format="onnx", path=dest, parent=artifact.name, precision="int8",
                   metadata={"quantization": {"engine": "neural-compressor", "method": "static",
                                              "per_channel": config.per_channel, "activation_type": act_dtype}})
    verify_goal_on_artifact(art, baseline, tolerable, config, trials, ctx, notes)
    return art


def verify_goal_on_artifact(art: Artifact, baseline: float | None, tolerable: float, config: QuantizeConfig,
                            trials: list[dict[str, Any]], ctx: StepContext, notes: Notes) -> None:
    """``goal_met`` from the ONNX artifact's accuracy in onnxruntime, with an advisory when it misses."""
    accuracy = ctx.evaluate(art).get("accuracy")
    torch_accuracy = max((t["accuracy"] for t in trials[1:]), default=None)
    if accuracy is None or baseline is None:
        notes.details.update({"goal_met": None, "artifact_accuracy": accuracy})
        return
    allowed = tolerable * abs(baseline) if config.loss_kind == "relative" else tolerable
    loss = baseline - float(accuracy)
    met = loss <= allowed + 1e-9
    notes.details.update({"goal_met": met, "artifact_accuracy": float(accuracy), "artifact_loss": loss,
                        "torch_quantized_accuracy": torch_accuracy, "allowed_loss": allowed,
                        "goal_measured_on": "onnx artifact (onnxruntime, this CPU)"})
    ctx.log(f"  {art.name} in onnxruntime: accuracy {accuracy:.4f} (loss {loss:+.4f}, allowed {allowed:.4f})"
            + ("" if met else " goal missed"))
    if not met:
        notes.advise("tuning_goal_unmet",
                   f"neural-compressor's tuned model met tolerable_loss {tolerable} in torch"
                   + (f" ({torch_accuracy:.4f})" if torch_accuracy is not None else "")
                   + f", but its ONNX export runs at accuracy {accuracy:.4f} in onnxruntime on this CPU (loss "
                   f"{loss:+.4f}); use engine: ort with tolerable_loss, or quantization-aware training (qat)",
                   severity="error" if config.require_goal else "warning", artifact=art.name)


def fold_weight_quantize(model: Any) -> int:
    """Replace QuantizeLinear nodes of constant weights by their int8 result, in place.

    The PT2E export keeps float weights and quantizes them at every run (a file larger than
    the float model's); onnxruntime's QDQ fusions want int8 initializers behind
    DequantizeLinear. Returns how many were folded.
    """
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    keep, folded = [], 0
    for node in g.node:
        ins = list(node.input)
        if node.op_type != "QuantizeLinear" or len(ins) < 3 or not all(i in inits for i in ins[:3]):
            keep.append(node)
            continue
        x = numpy_helper.to_array(inits[ins[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[ins[1]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[ins[2]])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:  # per-channel: broadcast along ``axis``
            shape = [1] * x.ndim
            shape[axis] = scale.size
            scale, zp_b = scale.reshape(shape), zp.reshape(shape).astype(np.float32)
        else:
            zp_b = zp.astype(np.float32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(x / scale) + zp_b, info.min, info.max).astype(zp.dtype)
        g.initializer.append(numpy_helper.from_array(q, node.output[0]))
        folded += 1
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    unused = [i for i in g.initializer if i.name not in used]
    for i in unused:
        g.initializer.remove(i)
    return folded
