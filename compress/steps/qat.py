"""The ``qat`` step: quantization-aware fine-tuning with torchao's pt2e flow.

The model is captured with ``torch.export`` (batch-2 example with a dynamic batch
dimension: a batch-1 capture specialises the batch and calibration then fails), fake
quantizers are inserted by the target's quantizer (``prepare_qat_pt2e``), the model is
fine-tuned so its weights adapt to int8 rounding, and ``convert_pt2e`` turns the fake
quantizers into quantize/dequantize pairs. The result exports to ONNX as a QDQ model
(``QuantizeLinear``/``DequantizeLinear`` around each convolution), which onnxruntime fuses
into integer kernels.

Quantizers: x86 uses ``X86InductorQuantizer`` (uint8 activations, int8 per-channel
weights: the combination onnxruntime fuses on x86). On an x86 CPU without VNNI the weights
are 7-bit (quant_min/max -64..63), what post-training quantization's ``reduce_range``
does: onnxruntime's u8s8 kernels there sum pairs of uint8 x int8 products into int16
(``vpmaddubsw``), which saturates for full-range weights (measured: mobilenet-digits' QAT
ONNX at accuracy 0.538 against 0.944 for its torch model). ARM uses the XNNPACK quantizer
(symmetric int8), which torchao 0.18 ships only as a deprecated test copy
(``torchao.testing.pt2e._xnnpack_quantizer``); it is the one pt2e quantizer for ARM there.

The step then exports the QAT model to ONNX and measures it as onnxruntime runs it on this
CPU: its accuracy against the torch QAT model, and its int8 kernels against the same QDQ
model computed in float; an advisory says when the int8 kernels cost accuracy. That export
is the run's ONNX export of the QAT model (made once).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from compress.core.checks import Bool
from compress.core.types import Artifact
from compress.core.step import Notes, StepContext, StepResult, register_step
from compress.core.errors import MissingDependencyError, StepError
from compress.intake.recipe import Recipe, TrainConfig

Problems = list[tuple[tuple[Any, ...], str]]


class QatConfig(TrainConfig):
    """Quantization-aware training with torchao pt2e."""

    target: Literal["auto", "x86", "arm"] = "auto"
    epochs: int = Field(2, ge=1, le=100_000)
    lr: float = Field(1e-4, gt=0, le=10)
    per_channel: Bool = True
    freeze_bn_epoch: int | None = Field(None, ge=0, le=100_000)


# Weights of 7 bits: u8 x s7 pair sums (2 x 255 x 64) fit int16, as onnxruntime's reduce_range.
REDUCED_WEIGHT_RANGE = (-64, 63)
# The QAT ONNX in onnxruntime may lose this much accuracy against its torch model before an advisory.
ONNX_LOSS_ADVISORY = 0.015


def make_quantizer(target: str, per_channel: bool, reduce_range: bool = False) -> tuple[Any, str]:
    """The pt2e quantizer for ``target`` (x86 or arm) in QAT mode, and its name.

    Args:
        target: ``x86`` or ``arm``.
        per_channel: Per-channel weights (the x86 quantizer always uses them).
        reduce_range: 7-bit weights (x86 without VNNI; see the module docstring).
    """
    try:
        if target == "arm":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from torchao.testing.pt2e._xnnpack_quantizer import (
                    XNNPACKQuantizer,
                    get_symmetric_quantization_config,
                )

                # It warns "deprecated" on creation; the step's advisory says so once, plainly.
                q = XNNPACKQuantizer()
            q.set_global(get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=True))
            return q, "XNNPACKQuantizer (torchao.testing.pt2e, deprecated test copy)"
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as e:
        raise MissingDependencyError("torchao", "quantization-aware training", 'pip install "torchao>=0.18"') from e
    q = X86InductorQuantizer()
    if not per_channel:
        warnings.warn("the x86 quantizer always quantizes weights per channel", stacklevel=2)
    cfg = get_default_x86_inductor_quantization_config(is_qat=True)
    if reduce_range:
        lo, hi = REDUCED_WEIGHT_RANGE
        cfg = replace(cfg, weight=replace(cfg.weight, quant_min=lo, quant_max=hi))
    q.set_global(cfg)
    return q, "X86InductorQuantizer" + (" (7-bit weights)" if reduce_range else "")


def capture(module: Any, example: list[Any], dynamic_batch: bool = True,
            batch_axes: list[int | None] | None = None) -> Any:
    """``torch.export`` a copy of the module for pt2e, with a dynamic batch dimension.

    The export shares its parameters with the module it traces, so training the captured graph
    would change the float model in place (the float parent the report compares with): a copy
    is exported instead. ``batch_axes`` gives each input's batch axis (None: a fixed input).
    """
    import copy

    import torch

    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        axes = batch_axes if batch_axes is not None else [0] * len(example)
        dynamic = tuple({ax: batch} if ax is not None else None for ax in axes)
    return torch.export.export(copy.deepcopy(module), tuple(example), dynamic_shapes=dynamic).module()


def quant_op_counts(module: Any) -> dict[str, int]:
    """How many quantize / dequantize ops the converted graph holds."""
    counts: dict[str, int] = {}
    for node in module.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and "quantize" in target:
            key = target.split(".")[-2] if target.count(".") >= 2 else target
            counts[key] = counts.get(key, 0) + 1
    return counts


def _freeze_bn(prepared: Any) -> None:
    """BatchNorm uses its running statistics from here on (dropout stays in training mode).

    pt2e has no public switch for this; torchao's own train/eval helper does exactly this
    replacement for the BatchNorm ops alone.
    """
    from torchao.quantization.pt2e.export_utils import _replace_batchnorm

    _replace_batchnorm(prepared, train_to_eval=True)


def check(config: QatConfig, baseline: Artifact, recipe: Recipe, data: Any) -> Problems:
    """Problems found before training (QAT without data is a recipe-level rule)."""
    problems: Problems = []
    if config.freeze_bn_epoch is not None and config.freeze_bn_epoch > config.epochs:
        problems.append((("freeze_bn_epoch",), (f"freeze_bn_epoch {config.freeze_bn_epoch} is after the last "
                                                f"epoch ({config.epochs}); it would never apply")))
    return problems


@register_step("qat", config=QatConfig, accepts=("torch",), check=check, needs_train_data=True)
def qat(artifact: Artifact, config: QatConfig, ctx: StepContext) -> StepResult:
    """Fine-tune the incoming float module with fake quantization; return the int8 module."""
    from compress.core.env import detect_cpu

    return qat_for(artifact, config, ctx, detect_cpu(ctx.target_arch if config.target == "auto" else config.target))


def qat_for(artifact: Artifact, config: QatConfig, ctx: StepContext, cpu: Any) -> StepResult:
    """The ``qat`` step with the target CPU's features (:class:`compress.core.env.CpuFeatures`) given explicitly."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from compress.intake.models import count_macs, count_params, set_mode
    from compress.steps.common import model_example
    from compress.steps.training import fit, multi_output_loss, plan_outputs

    if ctx.data is None:
        raise StepError(ctx.step_name, "quantization-aware training needs training data")
    notes = Notes(ctx)
    target = cpu.arch
    reduce_range = target == "x86" and cpu.u8s8_saturates
    quantizer, qname = make_quantizer(target, config.per_channel, reduce_range)
    float_module = artifact.module
    example = model_example(float_module, ctx.recipe)
    static = getattr(float_module, "_edgepack_static_batch", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        specs = ctx.recipe.model.input_specs() or []
        axes = [s.batch_axis for s in specs] if len(specs) == len(example) else None
        captured = capture(float_module, example, dynamic_batch=static is None, batch_axes=axes)
        prepared = prepare_qat_pt2e(captured, quantizer)
    # every output trains: on its labels where it has them, else from the float model (a teacher)
    try:
        plan = plan_outputs(float_module, ctx.recipe, ctx.data.train)
    except ValueError as e:
        raise StepError(ctx.step_name, str(e)) from e
    teacher = float_module if plan.needs_teacher() else None
    if teacher is not None:
        set_mode(float_module, False)
    loss = multi_output_loss(prepared, teacher, plan, temperature=1.0, alpha=0.0,
                             task_kind=ctx.recipe.task.kind)
    notes.details["outputs"] = plan.describe(teacher is not None, 0.0)

    def on_epoch_end(epoch: int) -> None:
        if config.freeze_bn_epoch is not None and epoch + 1 == config.freeze_bn_epoch:
            _freeze_bn(prepared)
            ctx.log(f"  BatchNorm statistics frozen after epoch {epoch + 1}")

    if config.freeze_bn_epoch == 0:
        _freeze_bn(prepared)
    result = fit(prepared, loss, ctx.data.train, config, seed=ctx.recipe.seed, log=ctx.log, progress=ctx.progress, desc="qat",
                 on_epoch_end=on_epoch_end, targets=plan.targets)
    set_mode(prepared, False)
    with warnings.catch_warnings(), _fold_only_present_convs():
        warnings.simplefilter("ignore")
        converted = convert_pt2e(prepared)
    set_mode(converted, False)
    if static is not None:
        converted._edgepack_static_batch = static
    converted._edgepack_macs = count_macs(float_module, ctx.recipe.model.input_specs() or [])
    converted._edgepack_params = count_params(float_module)
    ops = quant_op_counts(converted)
    if not ops:
        raise StepError(ctx.step_name, f"{qname} inserted no quantize ops: the model has no layer it quantizes")
    notes.details.update({"quantizer": qname, "target": target, "training": result.as_dict(), "quant_ops": ops,
                        "freeze_bn_epoch": config.freeze_bn_epoch, "reduce_range": reduce_range,
                        "cpu": cpu.as_dict()})
    if target == "arm":
        notes.advise("qat_xnnpack_deprecated", "the ARM (XNNPACK) pt2e quantizer is a deprecated test copy in "
                   "torchao 0.18; its QDQ model is fine, but pin torchao when you depend on it", severity="info")
    ctx.log(f"  {qname}: {sum(ops.values())} quantize/dequantize ops")
    out = artifact.derive(name="qat", module=converted, precision="int8")
    measure_onnx(out, artifact, ctx, notes)
    return notes.result(out)


@contextlib.contextmanager
def _fold_only_present_convs() -> Iterator[None]:
    """``convert_pt2e`` without the conv+BN folding passes for conv kinds the graph does not hold.

    torchao's ``_fold_conv_bn_qat`` runs its pattern pass for conv1d, conv2d and both transposed
    convs whatever the model holds, and each pass traces 24 pattern graphs with ``torch.export``:
    about 25 s of every conversion on 2 cores, against 0.3 s of training for the quickstart. A
    pass for a conv op absent from the graph matches nothing, so it is skipped, as long as one
    pass still runs (each also normalises the graph's dequantize nodes). Converted models are
    byte-identical with and without (tests/unit/compress/steps/test_qat.py). A torchao without
    that helper is left as it is.
    """
    try:
        import torch
        import torch.nn.functional as F
        import torchao.quantization.pt2e.qat_utils as qu
    except ImportError:
        yield
        return
    original = getattr(qu, "_fold_conv_bn_qat_helper", None)
    if original is None:
        yield
        return
    names = {F.conv1d: "conv1d", F.conv2d: "conv2d", F.conv_transpose1d: "conv_transpose1d",
             F.conv_transpose2d: "conv_transpose2d"}
    packets = {fn: getattr(torch.ops.aten, name) for fn, name in names.items()}
    ops = {fn: tuple(getattr(packet, o) for o in packet.overloads()) for fn, packet in packets.items()}

    def present(m: Any, targets: tuple[Any, ...]) -> bool:
        return any(node.target in targets for node in m.graph.nodes)

    def helper(m: Any, conv_fn: Any, example_inputs: Any, is_cuda: bool) -> Any:
        targets = ops.get(conv_fn)
        if targets is not None and not present(m, targets) and any(present(m, t) for t in ops.values()):
            return m  # nothing of this kind to fold, and another kind's pass does the graph's clean-up
        return original(m, conv_fn, example_inputs, is_cuda)

    qu._fold_conv_bn_qat_helper = helper
    try:
        yield
    finally:
        qu._fold_conv_bn_qat_helper = original


def measure_onnx(out: Artifact, float_art: Artifact, ctx: StepContext, notes: Notes) -> None:
    """Export the QAT model to ONNX and measure it in onnxruntime on this CPU.

    Its accuracy against the torch QAT model, its int8 kernels against the same QDQ model
    computed in float, and its speed against the float model it was trained from (``float_art``,
    the step's input, exported too). When the recipe exports ONNX, both exports are offered to
    the runner as those models' ONNX exports (each made once, then checked and benchmarked);
    otherwise they are removed after measuring.
    """
    import shutil

    from compress.intake.recipe import OnnxExportConfig
    from compress.core.env import describe_cpu, host_cpu
    from bench.host import MIN_KERNEL_AGREEMENT, MIN_KERNEL_COSINE, kernel_fidelity
    from export.onnx import export_onnx
    from bench.runtime import feeds_of
    from export.onnx_inspect import input_names

    wanted = ctx.recipe.export_config("onnx")
    export_ctx = ctx if wanted is not None else replace(ctx, step_dir=ctx.step_dir / "measure")
    export_ctx.step_dir.mkdir(parents=True, exist_ok=True)
    try:
        art = export_onnx(out, wanted or OnnxExportConfig(), export_ctx).artifact
    except Exception as e:  # noqa: BLE001  the runner's own export reports the failure where it belongs
        notes.details["onnx"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
        return
    torch_acc = ctx.evaluate(out.module).get("accuracy")
    onnx_acc = ctx.evaluate(art).get("accuracy")
    names, batch = input_names(art.path)
    try:
        fid = kernel_fidelity(art.path, feeds_of(ctx.data.eval.x, names, batch, 512, step=64))
    except Exception as e:  # noqa: BLE001  a measurement that cannot run must not fail the step
        fid = {"cosine": 1.0, "agreement": None, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    here = describe_cpu(host_cpu())  # where the measurement ran (not a target named by $EDGEPACK_CPUINFO)
    facts = {"cpu": here, "onnx_accuracy": onnx_acc, "torch_accuracy": torch_acc,
             "int8_kernels_vs_qdq_float": fid}
    notes.details["onnx"] = facts
    loss = (torch_acc - onnx_acc) if torch_acc is not None and onnx_acc is not None else None
    ctx.log(f"  QAT ONNX in onnxruntime on this {here}: accuracy {onnx_acc} (torch {torch_acc})")
    kernels_off = (fid["agreement"] is not None and fid["agreement"] < MIN_KERNEL_AGREEMENT) \
        or fid["cosine"] < MIN_KERNEL_COSINE
    if (loss is not None and loss > ONNX_LOSS_ADVISORY) or kernels_off:
        notes.advise("int8_kernels_lose_accuracy",
                   f"on this {here}, the QAT model's ONNX export runs at accuracy {onnx_acc} in onnxruntime against "
                   f"{torch_acc} for the torch QAT model; its int8 kernels agree with the same QDQ model computed "
                   f"in float on {fid['agreement'] if fid['agreement'] is not None else fid['cosine']:.1%} of samples"
                   ". The int8 arithmetic of this CPU loses accuracy: measure on the target CPU, or quantize with "
                   "qat target settings for it", artifact=art.name)
    float_onnx = speed_against_float(art, float_art, names, batch, replace(export_ctx, step_dir=export_ctx.step_dir
                                                                            / "float"), notes)
    if wanted is None:
        shutil.rmtree(export_ctx.step_dir, ignore_errors=True)
        return
    # the runner adopts each as that torch model's ONNX export (the QAT model's, and the float
    # parent's that the run exports beside it): neither is exported a second time
    notes.extra.append(art)
    if float_onnx is not None:
        notes.extra.append(float_onnx)


def speed_against_float(art: Artifact, float_art: Artifact, names: list[str], batch: int | None,
                        ctx: StepContext, notes: Notes) -> Artifact | None:
    """Time the QAT ONNX against the float model's ONNX (single thread, batch 1, in-process).

    The float model is exported with the run's ONNX export config into ``ctx.step_dir``; that
    export is returned (None when it failed: the runner then exports the float model itself and
    reports any failure where it belongs).
    """
    import shutil

    from compress.core.env import describe_cpu, host_cpu
    from compress.intake.recipe import OnnxExportConfig
    from bench.host import SLOWER_RATIO, relative_speed
    from export.onnx import export_onnx
    from bench.runtime import feeds_of

    ctx.step_dir.mkdir(parents=True, exist_ok=True)
    try:
        float_onnx = export_onnx(float_art, ctx.recipe.export_config("onnx") or OnnxExportConfig(), ctx).artifact
    except Exception as e:  # noqa: BLE001  a measurement that cannot run must not fail the step
        notes.details["onnx"]["speed_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        shutil.rmtree(ctx.step_dir, ignore_errors=True)
        return None
    try:
        speed = relative_speed(float_onnx.path, art.path, feeds_of(ctx.data.eval.x, names, batch, 1, step=1)[0])
    except Exception as e:  # noqa: BLE001  a measurement that cannot run must not fail the step
        notes.details["onnx"]["speed_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        return float_onnx
    notes.details["onnx"].update(speed)
    if speed["int8_ms"] > SLOWER_RATIO * speed["fp32_ms"]:
        notes.advise("int8_slower_than_fp32",
                   f"on this {describe_cpu(host_cpu())}, the QAT model's ONNX ran {speed['int8_ms']:.3f} ms against "
                   f"{speed['fp32_ms']:.3f} ms for the float model it was trained from (single thread, batch 1, "
                   "measured in the step): per-operator quantize/dequantize overhead outweighs the int8 arithmetic "
                   "on a model this small; keep fp32 unless size matters", artifact=art.name)
    return float_onnx
