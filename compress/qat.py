"""The ``qat`` step: quantization-aware fine-tuning with torchao's pt2e flow.

The model is captured with ``torch.export`` (batch-2 example with a dynamic batch
dimension: a batch-1 capture specialises the batch and calibration then fails), fake
quantizers are inserted by the target's quantizer (``prepare_qat_pt2e``), the model is
fine-tuned so its weights adapt to int8 rounding, and ``convert_pt2e`` turns the fake
quantizers into quantize/dequantize pairs. The result exports to ONNX as a QDQ model
(``QuantizeLinear``/``DequantizeLinear`` around each convolution), which onnxruntime fuses
into integer kernels.

Quantizers: x86 uses ``X86InductorQuantizer`` (uint8 activations, int8 per-channel
weights: the combination onnxruntime fuses on x86). ARM uses the XNNPACK quantizer
(symmetric int8), which torchao 0.18 ships only as a deprecated test copy
(``torchao.testing.pt2e._xnnpack_quantizer``); it is the one pt2e quantizer for ARM there.
"""

from __future__ import annotations

import warnings
from typing import Any

from compress.artifact import Artifact
from compress.context import StepContext
from compress.errors import MissingDependencyError, StepError
from compress.recipe import QatConfig, Recipe

Problems = list[tuple[tuple[Any, ...], str]]


def make_quantizer(target: str, per_channel: bool) -> tuple[Any, str]:
    """The pt2e quantizer for ``target`` (x86 or arm) in QAT mode, and its name."""
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
    q.set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    return q, "X86InductorQuantizer"


def capture(module: Any, example: list[Any], dynamic_batch: bool = True) -> Any:
    """``torch.export`` the module for pt2e, with a dynamic batch dimension."""
    import torch

    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic = tuple({0: batch} for _ in example)
    return torch.export.export(module, tuple(example), dynamic_shapes=dynamic).module()


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


def qat(artifact: Artifact, config: QatConfig, ctx: StepContext) -> Artifact:
    """Fine-tune the incoming float module with fake quantization; return the int8 module."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from compress.distill import distill_loss, supervised_loss
    from compress.models import count_macs, count_params, set_mode
    from compress.prune import model_example
    from compress.training import fit

    if ctx.data is None:
        raise StepError(ctx.step_name, "quantization-aware training needs training data")
    target = ctx.target_arch if config.target == "auto" else config.target
    quantizer, qname = make_quantizer(target, config.per_channel)
    float_module = artifact.module
    example = model_example(float_module, ctx.recipe)
    static = getattr(float_module, "_edgepack_static_batch", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = capture(float_module, example, dynamic_batch=static is None)
        prepared = prepare_qat_pt2e(captured, quantizer)
    if ctx.recipe.task.kind == "embedding":
        set_mode(float_module, False)
        loss = distill_loss(prepared, float_module, "embedding", 1.0, 1.0)
    else:
        loss = supervised_loss(prepared, ctx.recipe.task.kind)

    def on_epoch_end(epoch: int) -> None:
        if config.freeze_bn_epoch is not None and epoch + 1 == config.freeze_bn_epoch:
            _freeze_bn(prepared)
            ctx.log(f"  BatchNorm statistics frozen after epoch {epoch + 1}")

    if config.freeze_bn_epoch == 0:
        _freeze_bn(prepared)
    result = fit(prepared, loss, ctx.data.train, config, seed=ctx.recipe.seed, log=ctx.log, desc="qat",
                 on_epoch_end=on_epoch_end)
    set_mode(prepared, False)
    with warnings.catch_warnings():
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
    ctx.details.update({"quantizer": qname, "target": target, "training": result.as_dict(), "quant_ops": ops,
                        "freeze_bn_epoch": config.freeze_bn_epoch})
    if target == "arm":
        ctx.advise("qat_xnnpack_deprecated", "the ARM (XNNPACK) pt2e quantizer is a deprecated test copy in "
                   "torchao 0.18; its QDQ model is fine, but pin torchao when you depend on it", severity="info")
    ctx.log(f"  {qname}: {sum(ops.values())} quantize/dequantize ops")
    return artifact.derive(name="qat", module=converted, precision="int8")


def check(config: QatConfig, baseline: Artifact, recipe: Recipe, data: Any) -> Problems:
    """Problems found before training (QAT without data is a recipe-level rule)."""
    problems: Problems = []
    if config.freeze_bn_epoch is not None and config.freeze_bn_epoch > config.epochs:
        problems.append((("freeze_bn_epoch",), (f"freeze_bn_epoch {config.freeze_bn_epoch} is after the last "
                                                f"epoch ({config.epochs}); it would never apply")))
    if data is not None and recipe.task.kind != "embedding" and data.train.y is None:
        problems.append((("epochs",), (f"QAT fine-tunes on the labels of a {recipe.task.kind} task, "
                                       "but the data has no labels (y)")))
    return problems
