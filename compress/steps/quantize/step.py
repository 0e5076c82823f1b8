"""The ``quantize`` step: post-training quantization of the ONNX model with onnxruntime.

Methods: ``static`` (calibrated int8 QDQ, per-channel weights), ``dynamic`` (int8 weights of
MatMul/Gather, activations quantized at run time), ``fp16`` and ``weight_only``
(onnxruntime's blockwise ``MatMulNBits``). ``engine: inc`` hands the torch model to Intel
Neural Compressor instead (:mod:`compress.steps.quantize.inc`).

Target-aware defaults: onnxruntime's own default (int8 activations, s8s8) leaves a third of
MobileNetV2's convolutions and every residual Add in float on x86, between extra
Quantize/Dequantize pairs; uint8 activations (u8s8) fuse them all into QLinearConv /
QLinearAdd. So x86 gets u8s8 (with 7-bit weights, ``reduce_range``, when the CPU lacks VNNI
and u8s8 products could saturate), ARM gets s8s8. ``quant_pre_process`` runs first.

A ``quantize`` step that follows another one starts again from the same float model, so a
recipe can put several methods side by side.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.runtime import feeds_of
from compress.core.fileio import atomic_write_with
from compress.core.types import Artifact
from compress.core.step import Notes, StepContext, StepResult, register_step
from compress.core.errors import StepError
from compress.steps.quantize.config import QuantizeConfig
from compress.core.env import (
    CPUINFO_ENV,
    CpuFeatures,
    detect_cpu,
    host_arch,
    host_cpu,
    read_cpu_flags,
)
from compress.steps.quantize.tuning import Plan, describe
from export.onnx_inspect import input_names

# Dynamic quantization touches only these: ConvInteger (dynamic Conv) is several times
# slower than float Conv in onnxruntime, so convolutions stay float (and an advisory says so).
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM", "Gather")
# Static int8 on a transformer: only the weight-carrying operators. Quantizing everything
# also puts an 8-bit grid on the additive attention mask (float32's minimum next to scores of
# a few units) and on LayerNorm/GELU outputs: MiniLM's embeddings fell to cosine 0.37 that
# way, 0.94 with these alone, at the same speed (measured, docs/quantization.md).
STATIC_TRANSFORMER_OPS = ("MatMul", "Gemm", "Gather", "Conv")
SPARSITY_ADVISORY = 0.3


# --------------------------------------------------------------------------- target


def target_flags(arch: str) -> set[str] | None:
    """Flags of the CPU the model will run on, when known: ``$EDGEPACK_CPUINFO`` describes
    the target; otherwise this machine's, if it has the target's architecture."""
    if os.environ.get(CPUINFO_ENV):
        return read_cpu_flags()
    return read_cpu_flags() if host_arch() == arch else None


def resolve_arch(config: QuantizeConfig, ctx: StepContext) -> str:
    return ctx.target_arch if config.target == "auto" else config.target


def base_plan(config: QuantizeConfig, arch: str, dot: bool | None, transformer: bool = False) -> Plan:
    """The configured plan with the target's (and the model's) defaults filled in."""
    if config.method == "static":
        act = config.activation_type or ("uint8" if arch == "x86" else "int8")
    else:
        act = None
    weight = None if config.method == "fp16" else (config.weight_type or "int8")
    # u8s8 without VNNI multiplies pairs into int16 and can saturate: onnxruntime recommends 7-bit weights there.
    reduce_range = arch == "x86" and dot is False and act == "uint8" and config.method == "static"
    return Plan(method=config.method, activation_type=act, weight_type=weight, per_channel=config.per_channel,
                calibration=config.calibration if config.method == "static" else None,
                reduce_range=reduce_range, exclude=tuple(config.exclude),
                op_types=DYNAMIC_OPS if config.method == "dynamic" else
                STATIC_TRANSFORMER_OPS if config.method == "static" and transformer else None)


# --------------------------------------------------------------------------- check


def check(config: QuantizeConfig, baseline: Artifact, recipe: Any, data: Any) -> list[tuple[tuple, str]]:
    """Problems with a quantize config, found before any work starts."""
    problems: list[tuple[tuple, str]] = []
    if config.method == "static" and config.engine == "ort" and data is None:
        problems.append((("method",), ("static quantization calibrates on data: add a data section "
                                      "(or use method: dynamic, fp16 or weight_only)")))
    if config.tolerable_loss is not None and data is None:
        problems.append((("tolerable_loss",), "accuracy-aware tuning evaluates on data: add a data section"))
    if config.tolerable_loss is not None and recipe.task.kind == "classification" and data is not None \
            and data.eval.y is None:
        problems.append((("tolerable_loss",), "a classification task needs labels (y) to measure accuracy loss"))
    # (engine: inc on an ONNX model is a recipe-level rule, checked in compress.intake.recipe_io)
    if config.engine == "inc" and config.method != "static":
        problems.append((("method",), ("engine: inc supports method: static (its dynamic config is broken in "
                                      "neural-compressor 3.x)")))
    if config.method == "fp16" and (config.activation_type or config.weight_type):
        problems.append((("method",), "fp16 has no activation_type / weight_type"))
    if config.method in ("dynamic", "weight_only") and config.activation_type:
        problems.append((("activation_type",), f"{config.method} quantization does not calibrate activations"))
    if config.method == "weight_only" and config.weight_type == "uint8":
        problems.append((("weight_type",), "weight_only uses symmetric int8/int4 blocks; drop weight_type"))
    return problems


# --------------------------------------------------------------------------- helpers


def preprocess(src: Path, dst: Path, log: Any) -> str:
    """``quant_pre_process`` (shape inference + graph optimisation), with fallbacks.

    Symbolic shape inference fails on some dynamo exports (e.g. BERT's Expand); ONNX shape
    inference alone is then enough. Returns what was done.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = [("full", {}), ("onnx shapes only", {"skip_symbolic_shape": True}),
                ("no optimisation", {"skip_symbolic_shape": True, "skip_optimization": True})]
    for i, (label, kwargs) in enumerate(attempts):
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            return label
        except Exception as e:  # noqa: BLE001  (the next, simpler attempt follows)
            then = f"trying {attempts[i + 1][0]}" if i + 1 < len(attempts) else "quantizing the model as exported"
            log(f"  quant_pre_process ({label}) not possible on this graph ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); {then}")
    shutil.copyfile(src, dst)
    return "skipped"


class _Reader:
    """onnxruntime CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], advance: Callable[..., None] | None = None) -> None:
        self.feeds = feeds
        self._it = iter(feeds)
        self.advance = advance

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._it, None)
        if feed is not None and self.advance is not None:
            self.advance(1)
        return feed

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def check_exclude(exclude: list[str], path: Path, step: str) -> None:
    """Refuse an ``exclude`` name that names no node: onnxruntime would silently quantize it all."""
    if not exclude:
        return
    import difflib

    import onnx

    nodes = {n.name for n in onnx.load(str(path), load_external_data=False).graph.node}
    missing = [e for e in exclude if e not in nodes]
    if missing:
        close = difflib.get_close_matches(missing[0], sorted(nodes), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"node names look like {', '.join(sorted(nodes)[:5])}"
        raise StepError(step, f"exclude: no node named {missing[0]!r} in the model ({hint})")


def _quiet_ort_logs() -> None:
    # onnxruntime.quantization warns per tensor and some of its modules call basicConfig(INFO).
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("onnxruntime", "onnxruntime.quantization", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quantize_plan(plan: Plan, src: Path, dst: Path, calib: list[dict[str, np.ndarray]] | None,
                  extra: dict[str, Any] | None = None, advance: Callable[..., None] | None = None) -> None:
    """Write ``src`` quantized by ``plan`` to ``dst`` (atomically); ``advance`` is called per
    calibration batch read."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    _quiet_ort_logs()

    def write(tmp: Path) -> None:
        if plan.method == "static":
            if not calib:
                raise StepError("quantize", "static quantization needs calibration samples")
            methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
            options = dict(extra or {})
            if plan.exclude:
                # A tensor read by a quantized and an excluded node: without its own Q/DQ pair per
                # consumer the excluded node would read the quantized copy and stay exactly as lossy.
                options.setdefault("DedicatedQDQPair", True)
            quantize_static(str(src), str(tmp), _Reader(calib, advance), quant_format=QuantFormat.QDQ,
                            per_channel=plan.per_channel, reduce_range=plan.reduce_range,
                            activation_type=qt[plan.activation_type or "uint8"], weight_type=qt[plan.weight_type or "int8"],
                            nodes_to_exclude=list(plan.exclude), calibrate_method=methods[plan.calibration or "minmax"],
                            op_types_to_quantize=list(plan.op_types) if plan.op_types else None,
                            extra_options=options)
        elif plan.method == "dynamic":
            quantize_dynamic(str(src), str(tmp), op_types_to_quantize=list(plan.op_types or DYNAMIC_OPS),
                             per_channel=plan.per_channel,
                             reduce_range=plan.reduce_range, weight_type=qt[plan.weight_type or "int8"],
                             nodes_to_exclude=list(plan.exclude), extra_options=dict(extra or {}))
        elif plan.method == "fp16":
            from compress.steps.quantize.fp16 import convert_to_fp16

            onnx.save(convert_to_fp16(onnx.load(str(src))), str(tmp))
        elif plan.method == "weight_only":
            weight_only(src, tmp, plan)
        else:
            raise StepError("quantize", f"unknown method {plan.method}")

    # the calibrators print progress to stdout; the run log has our own line per trial
    with contextlib.redirect_stdout(io.StringIO()):
        atomic_write_with(dst, write)


WEIGHT_ONLY_BITS = 8
WEIGHT_ONLY_BLOCK = 32


def weight_only(src: Path, dst: Path, plan: Plan) -> None:
    """Blockwise symmetric int8 weights for MatMul (onnxruntime's MatMulNBits, float activations).

    MatMulNBits is a contrib operator that onnxruntime's CPU (and CUDA) providers run;
    other runtimes do not. Convolutions are not covered by it.
    """
    import onnx

    root = logging.getLogger()
    level = root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.setLevel(level)  # the module calls logging.basicConfig(level=INFO) on import
    model = onnx.load(str(src))
    q = MatMulNBitsQuantizer(model, bits=WEIGHT_ONLY_BITS, block_size=WEIGHT_ONLY_BLOCK, is_symmetric=True,
                             accuracy_level=4, nodes_to_exclude=list(plan.exclude))
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def is_transformer(summary: Any) -> bool:
    """Matrix products carry the compute and attention (Softmax) is present."""
    return summary.matmul_macs > summary.conv_macs and summary.op_counts.get("Softmax", 0) > 0


def precision_of(plan: Plan, n_conv: int) -> str:
    """int8 when every compute node is quantized, fp16, or mixed (some float compute left)."""
    if plan.method == "fp16":
        return "fp16"
    if plan.method == "weight_only" or plan.exclude or (plan.method == "dynamic" and n_conv):
        return "mixed"
    return "int8"


# --------------------------------------------------------------------------- advisories


def advise(config: QuantizeConfig, artifact: Artifact, summary: Any, arch: str, dot: bool | None,
           notes: Notes) -> None:
    """Advisories for choices that will not pay off on this model and target."""
    method = config.method
    if method == "dynamic" and summary.n_conv and summary.conv_share > 0.5:
        notes.advise("dynamic_on_conv",
                   f"dynamic int8 on a convolutional network: convolutions carry {summary.conv_share:.0%} of the "
                   "compute, and onnxruntime runs dynamically quantized convolutions (ConvInteger) several times "
                   "slower than float, so they were left in float and the model will barely speed up; "
                   "use method: static")
    sparsity = artifact.metadata.get("sparsity")
    sparsity = max(float(sparsity) if isinstance(sparsity, (int, float)) else 0.0, summary.weight_sparsity)
    if sparsity > SPARSITY_ADVISORY:
        notes.advise("sparsity_on_dense_runtime",
                   f"{sparsity:.0%} of the weights are zero (unstructured sparsity), but onnxruntime's CPU kernels "
                   "are dense: zeros cost the same time as any weight and int8 does not shrink them further. "
                   "Use structured pruning (prune: {method: structured}) to remove channels instead")
    if method in ("static", "dynamic") and dot is False:
        flags = "avx512_vnni / avx_vnni" if arch == "x86" else "asimddp (ARMv8.2 dot product)"
        notes.advise("int8_without_dot_product",
                   f"int8 on a {arch} CPU without int8 dot-product instructions ({flags}): int8 kernels gain "
                   "little over float there" + (" and u8s8 needs 7-bit weights (reduce_range) to avoid saturation"
                                                if arch == "x86" else "") + "; measure before shipping, or use fp16 "
                   "where the CPU has fp16 arithmetic")
    if method == "fp16" and arch == "x86":
        notes.advise("fp16_on_x86_cpu",
                   "fp16 halves the file, but onnxruntime's x86 CPU kernels compute in float32 and insert casts "
                   "around fp16 nodes, so it runs slower than fp32 here; fp16 pays off on GPUs and ARM CPUs "
                   "with fp16 arithmetic", severity="info")
    if method == "weight_only" and (summary.op_counts.get("MatMul", 0) == 0 or summary.conv_share > 0.5):
        notes.advise("weight_only_no_matmul",
                   "weight_only quantizes MatMul weights (onnxruntime's MatMulNBits), not convolutions or Gemm; "
                   f"here convolutions carry {summary.conv_share:.0%} of the compute, so the model barely changes. "
                   "Use method: static")


# --------------------------------------------------------------------------- the step


def float_source(artifact: Artifact, config: QuantizeConfig, ctx: StepContext, notes: Notes) -> Artifact:
    """The float ONNX model to quantize.

    The runner hands this step ONNX (a torch model is exported at the format boundary, once,
    parity-checked); an artifact that is already quantized by an earlier quantize step is
    replaced by the float model that step started from.
    """
    if artifact.format != "onnx":
        raise StepError(ctx.step_name, f"quantize (engine: ort) takes an ONNX model, got {artifact.format}: "
                                       "run it through a recipe (the run exports torch models to ONNX first)")
    src = artifact.metadata.get("float_model")
    if src and Path(src).is_file():
        return Artifact(name=artifact.metadata.get("float_name", "onnx-fp32"), format="onnx", path=Path(src),
                        precision="fp32")
    return artifact


def _input_format(config: QuantizeConfig) -> str:
    """``engine: inc`` tunes the torch model; onnxruntime quantizes its ONNX export."""
    return "torch" if config.engine == "inc" else "onnx"


@register_step("quantize", config=QuantizeConfig, accepts=("onnx", "torch"), check=check, input_format=_input_format)
def quantize(artifact: Artifact, config: QuantizeConfig, ctx: StepContext) -> StepResult:
    """The ``quantize`` step (see the module docstring), for the CPU the model will run on."""
    return quantize_for(artifact, config, ctx, detect_cpu(resolve_arch(config, ctx)))


@contextlib.contextmanager
def scratch_dir(parent: Path) -> Iterator[Path]:
    """A folder inside ``parent``, removed afterwards, that is also the working directory and
    ``tempfile``'s folder meanwhile.

    onnxruntime's quantization tools write scratch files into the working directory
    (``sym_shape_infer_temp.onnx`` and its external data when symbolic shape inference is
    incomplete) and into the temp folder (pre-processing, augmented calibration models):
    with this, every file of a quantize run stays in its step folder.
    """
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="work-", dir=parent)).resolve()
    old_cwd, old_tmp = os.getcwd(), tempfile.tempdir
    os.chdir(path)
    tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        os.chdir(old_cwd)
        tempfile.tempdir = old_tmp
        shutil.rmtree(path, ignore_errors=True)


def upgrade_if_old(src: Path, work: Path, plan: Plan, calib_x: list[np.ndarray] | None,
                   ctx: StepContext, notes: Notes) -> tuple[Path, Plan]:
    """Opset < 13: the upgraded model (parity-checked), or per-tensor weights when that fails."""
    from dataclasses import replace

    import onnx

    from compress.steps.quantize.opset import PER_CHANNEL_OPSET, UpgradeParityError, model_opset, upgrade_opset

    if model_opset(onnx.load(str(src), load_external_data=False)) >= PER_CHANNEL_OPSET:
        return src, plan
    names, batch = input_names(src)
    feeds = feeds_of(calib_x, names, batch, 32) if calib_x is not None else []
    dst = work / "upgraded.onnx"
    try:
        up = upgrade_opset(src, dst, feeds)
    except UpgradeParityError as e:
        raise StepError(ctx.step_name, str(e)) from e
    if up.from_opset >= PER_CHANNEL_OPSET:
        return src, plan
    notes.details["opset_upgrade"] = {**up.as_dict(), "parity_batches": len(feeds)}
    if up.upgraded:
        ctx.log(f"  opset {up.from_opset} -> {up.to_opset} (onnx.version_converter), max output difference "
                + (f"{up.max_abs_diff:.2e}" if up.max_abs_diff is not None else "not checked (no data)"))
        return dst, plan
    if plan.per_channel and plan.method in ("static", "dynamic"):
        notes.advise("opset_upgrade_failed",
                   f"the model's opset {up.from_opset} has no per-channel DequantizeLinear (opset 13+), and "
                   f"onnx.version_converter could not upgrade it ({up.error}): weights are quantized per tensor, "
                   "which can cost accuracy. Re-export the model with opset 13 or newer for per-channel weights")
        plan = replace(plan, per_channel=False)
    return src, plan


def verify_loads(path: Path, step: str) -> None:
    """A quantized model onnxruntime cannot open is this step's failure, said plainly."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StepError(step, f"onnxruntime cannot load the quantized model ({first[:300]}); try per_channel: "
                              "false, or exclude the node it names") from e


def measure_on_artifact(dest: Path, float_path: Path, cpu: CpuFeatures, feeds: list[dict[str, np.ndarray]],
                        one: dict[str, np.ndarray], name: str, notes: Notes) -> None:
    """Advisories from the artifact on this CPU: int8 kernels vs QDQ in float, int8 vs fp32 speed."""
    from compress.core.env import describe_cpu
    from bench.host import MIN_KERNEL_AGREEMENT, MIN_KERNEL_COSINE, SLOWER_RATIO, kernel_fidelity, relative_speed

    here = describe_cpu(cpu)
    try:
        fid = kernel_fidelity(dest, feeds)
        speed = relative_speed(float_path, dest, one)
    except Exception as e:  # noqa: BLE001  a measurement that cannot run must not fail the step
        notes.details["on_this_cpu"] = {"cpu": here, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        return
    notes.details["on_this_cpu"] = {"cpu": here, "int8_kernels_vs_qdq_float": fid, **speed}
    agreement = fid["agreement"]
    if (agreement is not None and agreement < MIN_KERNEL_AGREEMENT) or fid["cosine"] < MIN_KERNEL_COSINE:
        figure = f"agreement {agreement:.1%}" if agreement is not None else f"mean cosine {fid['cosine']:.4f}"
        notes.advise("int8_kernels_lose_accuracy",
                   f"on this {here}, onnxruntime's int8 kernels disagree with the same QDQ model computed in float "
                   f"({figure} over {fid['samples']} samples): the int8 arithmetic itself loses accuracy here "
                   "(without VNNI, u8s8 products saturate unless weights are 7-bit). Use reduce_range / "
                   "activation_type: int8, or measure on the target CPU", artifact=name)
    if speed["int8_ms"] > SLOWER_RATIO * speed["fp32_ms"]:
        notes.advise("int8_slower_than_fp32",
                   f"on this {here}, {name} ran {speed['int8_ms']:.3f} ms against {speed['fp32_ms']:.3f} ms for the "
                   "float model (single thread, batch 1, measured in the step): per-operator quantize/dequantize "
                   "overhead outweighs the int8 arithmetic on a model this small; keep fp32 unless size matters",
                   artifact=name)


def quantize_for(artifact: Artifact, config: QuantizeConfig, ctx: StepContext, cpu: CpuFeatures) -> StepResult:
    """The ``quantize`` step with the target CPU's features given explicitly.

    Args:
        artifact: The model to quantize: ONNX, or torch for ``engine: inc``.
        config: The step's configuration.
        ctx: The step context.
        cpu: The target CPU's features (:func:`compress.core.env.detect_cpu` for the real one).
    """
    notes = Notes(ctx)
    if config.engine == "inc":
        from compress.steps.quantize.inc import quantize_inc

        return notes.result(quantize_inc(artifact, config, ctx, cpu, notes))
    from export.onnx_inspect import io_quant_params, summarize

    source = float_source(artifact, config, ctx, notes)
    arch, dot = cpu.arch, cpu.has_int8_dot
    summary = summarize(source.path)
    if summary.quantized:
        raise StepError(ctx.step_name, f"{source.name} is already quantized; quantize a float model")
    advise(config, artifact, summary, arch, dot, notes)
    plan = base_plan(config, arch, dot, transformer=is_transformer(summary))
    notes.details.update({"method": config.method, "target": arch, "int8_dot_product": dot, "cpu": cpu.as_dict(),
                        "model": summary.as_dict(), "source": source.name})
    step_dir = ctx.step_dir.resolve()
    dest = step_dir / "model.onnx"
    float_path = source.path.resolve()
    calib_x = ctx.data.calib.x if ctx.data is not None else None
    name = config.name or f"onnx-{config.method}"
    with scratch_dir(step_dir) as work:
        src = float_path
        if config.method in ("static", "dynamic"):
            src, plan = upgrade_if_old(float_path, work, plan, calib_x, ctx, notes)
        pre = work / "preprocessed.onnx"
        if config.method in ("static", "dynamic"):
            notes.details["preprocess"] = preprocess(src, pre, ctx.log)
        else:
            shutil.copyfile(src, pre)
        names, batch = input_names(pre)
        check_exclude(config.exclude, pre, ctx.step_name)
        calib = None
        if config.method == "static":
            n = config.calibration_samples or len(ctx.data.calib)
            calib = feeds_of(ctx.data.calib.x, names, batch, n)
            notes.details["calibration_samples"] = min(n, len(ctx.data.calib))
        if config.tolerable_loss is None:
            ctx.log(f"  {describe(plan)}")
            what = (f"calibrate on {len(calib)} batches and quantize" if calib else f"quantize ({config.method})")
            try:
                with ctx.progress(what, len(calib) if calib else None) as advance:
                    quantize_plan(plan, pre, dest, calib, advance=advance)
            except StepError:
                raise
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise StepError(ctx.step_name, f"onnxruntime quantization failed: {type(e).__name__}: {first[:300]} "
                                               "(try per_channel: false, or exclude the node it names)") from e
            chosen_plan = plan
        else:
            from compress.steps.quantize.tuning import tune

            chosen = tune(plan, config, ctx, notes, pre, names, batch, calib, work)
            chosen_plan = chosen.plan
            atomic_write_with(dest, lambda tmp: shutil.copyfile(chosen.path, tmp))
        verify_loads(dest, ctx.step_name)
        if config.method in ("static", "dynamic") and ctx.data is not None and cpu.arch == host_arch():
            eval_x = ctx.data.eval.x
            measure_on_artifact(dest, pre, host_cpu(), feeds_of(eval_x, names, batch, 256, step=64),
                                feeds_of(eval_x, names, batch, 1, step=1)[0], name, notes)
    metadata = {k: v for k, v in artifact.metadata.items() if not k.startswith("_")}
    metadata.update({
        "quantization": {**chosen_plan.as_dict(), "engine": "onnxruntime", "format": "QDQ" if chosen_plan.method ==
                         "static" else chosen_plan.method, "target": arch},
        "io_quantization": io_quant_params(dest),
        **({"weight_bits": WEIGHT_ONLY_BITS, "block_size": WEIGHT_ONLY_BLOCK} if config.method == "weight_only" else {}),
        "float_model": str(source.path), "float_name": source.name,
    })
    precision = precision_of(chosen_plan, summary.n_conv)
    if chosen_plan.method != "fp16" and not summarize(dest).quantized:
        # e.g. weight_only on a model without MatMul: the file is the float model, and says so
        precision = "fp32"
        notes.advise("nothing_quantized", f"{config.method} quantization changed no operator of this model: the "
                   f"artifact is the float model ({source.name}) under another name", artifact=name)
    notes.details["quantized"] = precision != "fp32"
    return notes.result(Artifact(name=name, format="onnx", path=dest, parent=source.name, precision=precision,
                                 metadata=metadata))
