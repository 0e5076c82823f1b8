"""The ``tflite`` export: a PyTorch module -> ``.tflite`` files, one per precision.

- ``fp32``: ``litert_torch.convert`` (NCHW inputs as in torch, or NHWC with
  ``channels_last_io`` through ``litert_torch.to_channel_last_io``).
- ``fp16``: the float model with its weights stored as float16 (ai-edge-quantizer's
  float-casting weight-only recipe; compute stays float32).
- ``dynamic_int8``: int8 weights, activations quantized on the fly by the kernels
  (ai-edge-quantizer ``dynamic_wi8_afp32``).
- ``int8``: full integer, int8 inputs and outputs: ai-edge-quantizer ``static_wi8_ai8``
  calibrated on the recipe's calibration split. When the run already did QAT (the torch
  artifact is a pt2e-converted graph) its own quantization parameters are kept instead:
  the quantize/dequantize pairs are lowered by litert-torch (the PT2E path).

Every ``.tflite`` is parsed afterwards (:mod:`export.tflite_inspect`) so its metadata
says what an app must feed it: layout, dtypes, and the scale and zero point of int8 I/O.
Parity, accuracy and benchmarks are the runner's job, as for ONNX.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.fileio import atomic_write_with, config_hash
from compress.core.types import Artifact
from compress.core.step import Notes, StepContext, StepResult
from compress.core.errors import EdgepackError, MissingDependencyError, StepError
from compress.intake.recipe import TfliteExportConfig

STEP = "export:tflite"
INSTALL_HINT = 'pip install -e . (or: pip install "litert-torch==0.10.0" "ai-edge-quantizer>=0.10" "ai-edge-litert>=2.3")'
# An int8 output that sits on its range limit for at least this share of eval samples
# was clipped by the calibrated range often enough to matter (one in a hundred inputs).
SATURATION_ADVISORY_SHARE = 0.01
# ... and a warning (not a note) from one in twenty, or when a predicted class changes.
SATURATION_WARNING_SHARE = 0.05


# --------------------------------------------------------------------------- layout


def to_model_layout(metadata: dict[str, Any], xs: list[np.ndarray]) -> list[np.ndarray]:
    """Inputs in NCHW (as torch takes them) -> the layout the exported model expects."""
    from bench.agent import ModelInputs, batch_axes_of

    idx = set(metadata.get("channels_last_inputs") or [])
    return ModelInputs([np.ascontiguousarray(np.moveaxis(x, 1, -1)) if i in idx else x for i, x in enumerate(xs)],
                       batch_axes_of(xs))


def from_model_layout(metadata: dict[str, Any], ys: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of the exported model -> torch's channels-first layout."""
    idx = set(metadata.get("channels_last_outputs") or [])
    return [np.ascontiguousarray(np.moveaxis(y, -1, 1)) if i in idx else y for i, y in enumerate(ys)]


# --------------------------------------------------------------------------- converter plumbing


def _import_converter() -> Any:
    """litert_torch, with its progress display off; a missing package is a clear error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import litert_torch
    except ImportError as e:
        missing = getattr(e, "name", None) or "litert-torch"
        raise MissingDependencyError(
            "litert-torch" if missing.startswith("litert") else missing, "TFLite export", INSTALL_HINT
        ) from e
    litert_torch.config.show_progress = False
    return litert_torch


def _import_quantizer() -> Any:
    try:
        from ai_edge_quantizer import quantizer
    except ImportError as e:
        raise MissingDependencyError("ai-edge-quantizer", "TFLite quantization (fp16, dynamic_int8, int8)",
                                     INSTALL_HINT) from e
    return quantizer


@contextmanager
def captured_output(log_path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (the C++ converter's too) to ``log_path``.

    The converter, the calibrator and the interpreter print progress bars and C++ log
    lines straight to the file descriptors; they belong in the run folder, not on the
    user's terminal.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


_LOWERING_RE = re.compile(r"Lowering not found: (?P<op>[\w.]+)")
_LEGALIZE_RE = re.compile(r"failed to legalize operation '(?P<op>[\w.]+)'")
_SOURCE_RE = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<fn>[\w<>]+)\n\s*(?P<code>[^\n]+)')


def layer_of_op(module: Any, sample: tuple[Any, ...], op: str) -> str | None:
    """The module path (and class) whose forward calls ``op``, e.g. ``pool (MedianPool)``.

    The converter names the aten op but not the layer: the module is captured again with
    ``torch.export`` and the op's node looked up in its module stack.
    """
    import torch

    def find(graph: Any) -> str | None:
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            target = str(node.target)
            if target == op or target.rsplit(".", 1)[0] == op or target.split(".")[:2] == op.split(".")[:2]:
                stack = node.meta.get("nn_module_stack") or {}
                if not stack:
                    return None
                path, cls = list(stack.values())[-1]
                cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                cls_name = cls_name.rsplit(".", 1)[-1]
                path = str(path).replace("L['self'].", "").replace("L['self']", "")
                return f"{path or '<top level>'} ({cls_name})"
        return None

    try:
        program = torch.export.export(module, sample, strict=False)
        return find(program.graph) or find(program.run_decompositions().graph)
    except Exception:  # noqa: BLE001  (best effort: the error message goes out without the layer)
        return None


def converter_error(e: BaseException, module: Any, sample: tuple[Any, ...], log_path: Path) -> StepError:
    """A readable StepError from whatever the converter raised (op, layer, source line)."""
    text = str(e)
    m = _LOWERING_RE.search(text) or _LEGALIZE_RE.search(text)
    if m:
        op = m.group("op")
        layer = layer_of_op(module, sample, op)
        where = f" in layer {layer}" if layer else ""
        src = _SOURCE_RE.findall(text)
        if src:
            file, line, _fn, code = src[-1]
            where += f" ({Path(file).name}:{line}: {code.strip()})"
        return StepError(STEP, f"litert-torch cannot convert the op {op}{where}: TFLite has no lowering for it. "
                               "Rewrite that layer with supported ops, or export only to ONNX "
                               f"(export: [onnx]). Converter log: {log_path}")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return StepError(STEP, f"litert-torch conversion failed: {type(e).__name__}: {first} (converter log: {log_path})")


# --------------------------------------------------------------------------- PT2E (QAT) models


def is_pt2e_quantized(module: Any) -> bool:
    """True for a pt2e-converted graph (quantize/dequantize ops from ``convert_pt2e``)."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return False
    return any(n.op == "call_function" and "quantized_decomposed" in str(n.target) for n in graph.nodes)


def pt2e_for_litert(module: Any) -> tuple[Any, dict[str, int]]:
    """A copy of a pt2e-converted graph in the form litert-torch lowers to int8 TFLite ops.

    Two exact rewrites: uint8 activations (the x86 quantizer's) become int8 with the zero
    point shifted by 128, the same real values; and weights that ``convert_pt2e`` folded to
    int8 constants get their float values and a quantize op back, because litert-torch
    reads the quantization of a weight from that op.
    """
    import torch

    qd = torch.ops.quantized_decomposed
    gm = copy.deepcopy(module)
    graph = gm.graph
    counts = {"uint8_to_int8": 0, "unfolded_weights": 0}
    per_tensor = (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default)
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in per_tensor and node.args[5] == torch.uint8 and isinstance(node.args[2], int):
            x, scale, zero, lo, hi, _ = node.args
            node.args = (x, scale, zero - 128, lo - 128, hi - 128, torch.int8)
            counts["uint8_to_int8"] += 1
        src = node.args[0] if node.args else None
        if not (isinstance(src, torch.fx.Node) and src.op == "get_attr"):
            continue
        if node.target == qd.dequantize_per_channel.default:
            weight = getattr(gm, src.target)
            if weight.is_floating_point():
                continue
            _, s_node, z_node, axis, lo, hi, dtype = node.args
            scale, zero = getattr(gm, s_node.target), getattr(gm, z_node.target)
            shape = [1] * weight.dim()
            shape[axis] = -1
            real = (weight.to(torch.float32) - zero.reshape(shape).to(torch.float32)) * scale.reshape(shape)
            qop, qargs = qd.quantize_per_channel.default, (s_node, z_node, axis, lo, hi, dtype)
        elif node.target == qd.dequantize_per_tensor.default:
            weight = getattr(gm, src.target)
            if weight.is_floating_point():
                continue
            _, scale, zero, lo, hi, dtype = node.args
            real = (weight.to(torch.float32) - zero) * scale
            qop, qargs = qd.quantize_per_tensor.default, (scale, zero, lo, hi, dtype)
        else:
            continue
        name = f"_edgepack_float_weight_{counts['unfolded_weights']}"
        gm.register_buffer(name, real)
        with graph.inserting_before(node):
            attr = graph.get_attr(name)
            quant = graph.call_function(qop, (attr, *qargs))
        node.replace_input_with(src, quant)
        counts["unfolded_weights"] += 1
    graph.eliminate_dead_code()
    graph.lint()
    gm.recompile()
    return gm, counts


def _pt2e_quant_config() -> Any:
    """A QuantConfig whose only effect is the converter's STATIC QDQ mode (int8 I/O)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig

    return QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config()))


# --------------------------------------------------------------------------- quantization


def _calibration_inputs(ctx: StepContext, notes: Notes, config: TfliteExportConfig,
                        nhwc: list[int]) -> tuple[list[np.ndarray], str]:
    from bench.agent import take_samples
    from compress.intake.data import synthetic_inputs

    if ctx.data is not None and len(ctx.data.calib) > 0:
        n = min(config.calibration_samples or len(ctx.data.calib), len(ctx.data.calib))
        xs, source = take_samples(ctx.data.calib.x, slice(0, n)), "calibration split"
    else:
        specs = ctx.recipe.model.input_specs() or []
        n = config.calibration_samples or 64
        xs = synthetic_inputs(specs, n, ctx.recipe.seed).x
        source = "random inputs (the recipe has no data)"
        notes.advise("tflite_int8_random_calibration",
                     "int8 .tflite calibrated on random inputs because the recipe has no data: its ranges will not "
                     "match real inputs; add data: so calibration sees real samples")
    return to_model_layout({"channels_last_inputs": nhwc}, xs), source


def quantize_float_model(float_bytes: bytes, precision: str, calib: list[np.ndarray] | None = None,
                         input_names: list[str] | None = None, signature: str | None = None,
                         input_dtypes: list[str] | None = None) -> bytes:
    """The float ``.tflite`` quantized by ai-edge-quantizer to ``precision``.

    Args:
        float_bytes: The fp32 model.
        precision: fp16 (float16 weights), dynamic_int8 (int8 weights, dynamic activations)
            or int8 (static int8 weights and activations, int8 I/O; needs ``calib``).
        calib: Calibration inputs (one array per model input, samples along each input's
            batch axis, fixed inputs whole) for int8.
        input_names: The signature's input names, in call order.
        signature: The signature key.
        input_dtypes: The model's input dtypes, in call order.
    """
    quantizer = _import_quantizer()
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe

    q = quantizer.Quantizer(bytearray(float_bytes))
    if precision == "fp16":
        q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                 algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
        return bytes(q.quantize(enable_progress_report=False).quantized_model)
    if precision == "dynamic_int8":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        return bytes(q.quantize(enable_progress_report=False).quantized_model)
    if precision != "int8":
        raise ValueError(f"unknown TFLite precision {precision!r}")
    if not calib:
        raise ValueError("static int8 quantization needs calibration inputs")
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    static = recipe.static_wi8_ai8()
    q.load_quantization_recipe(static)
    names = input_names or [f"args_{i}" for i in range(len(calib))]
    dtypes = input_dtypes or ["float32"] * len(calib)
    from bench.agent import num_samples, take_samples

    # The model has a fixed batch (that of the sample it was traced with): feed one sample at a time.
    samples = [{name: np.asarray(x, dtype=dt) for name, x, dt in zip(names, take_samples(calib, slice(i, i + 1)), dtypes)}
               for i in range(num_samples(calib))]
    # Quantizer.calibrate keeps a moving average (factor 0.95) of per-sample ranges, which
    # ends well inside the range the calibration data really covers (the quickstart's
    # logits clipped on more than half the eval samples); the global min/max does not clip
    # what calibration has seen, as onnxruntime's MinMax calibration.
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(static)
    with warnings.catch_warnings():  # the calibrator keeps every tensor on purpose and warns about it
        warnings.simplefilter("ignore", UserWarning)
        calib_run = calibrator.Calibrator(bytearray(float_bytes), num_threads=1,
                                          qsv_update_func=qsv_utils.min_max_update)
        calib_run.calibrate({signature or "serving_default": samples}, manager)
        result = calib_run.get_model_qsvs()
        return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


# --------------------------------------------------------------------------- saturation


def output_saturation(outputs: list[np.ndarray], specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How often each integer-quantized output sits on its range limit.

    Args:
        outputs: Dequantized outputs on eval inputs (what the runtime hands back).
        specs: The model's output specs (``dtype`` and ``quantization``).

    Returns:
        One entry per quantized output: share of samples with a value at the top or the
        bottom of the range, and the float range the int8 output can represent.
    """
    found = []
    for k, (y, spec) in enumerate(zip(outputs, specs)):
        q = spec.get("quantization")
        if not q or spec["dtype"] not in ("int8", "uint8"):
            continue
        info = np.iinfo(np.dtype(spec["dtype"]))
        scale, zero = q["scale"], q["zero_point"]
        ints = np.rint(y.reshape(len(y), -1) / scale + zero)
        at_max = (ints >= info.max).any(axis=1)
        at_min = (ints <= info.min).any(axis=1)
        found.append({"output": k, "share_at_max": float(at_max.mean()), "share_at_min": float(at_min.mean()),
                      "range": [float((info.min - zero) * scale), float((info.max - zero) * scale)],
                      "samples": len(y)})
    return found


def _advise_saturation(ctx: StepContext, notes: Notes, name: str, found: list[dict[str, Any]], outputs: list[np.ndarray],
                       reference: list[np.ndarray], calib_source: str) -> None:
    """Advise on outputs that sit on their int8 range limit for a share of eval samples.

    A warning when the clipping changes a predicted class (classification) or touches at
    least one sample in twenty; otherwise a note.
    """
    for s in found:
        share = max(s["share_at_max"], s["share_at_min"])
        if share < SATURATION_ADVISORY_SHARE:
            continue
        k = s["output"]
        ref = reference[k] if k < len(reference) else None
        lo, hi = s["range"]
        seen = f"; the PyTorch model's values reach [{ref.min():.3g}, {ref.max():.3g}]" if ref is not None else ""
        changed = None
        if ctx.recipe.task.kind == "classification" and ref is not None and ref.ndim == 2 and k == 0:
            out = outputs[k].reshape(len(ref), -1)
            half_step = (hi - lo) / 255 / 2  # 8-bit outputs: 255 steps between the limits
            clipped = ((out >= hi - half_step) | (out <= lo + half_step)).any(axis=1)
            changed = int((ref.argmax(1) != out.argmax(1))[clipped].sum())
        effect = "" if changed is None else (f"; on {changed} of them the predicted class differs from PyTorch"
                                             if changed else "; no predicted class changes on those samples")
        notes.advise(
            "int8_output_saturation",
            f"{name}: output {k} hits its int8 range limit on {share:.1%} of eval samples (int8 range "
            f"[{lo:.3g}, {hi:.3g}] from the {calib_source}{seen}{effect}): the calibrated range clips the outputs. "
            "Calibrate on more representative samples (data.calibration_samples, "
            "export tflite.calibration_samples) or keep the output in float (precision dynamic_int8 or fp16).",
            severity="warning" if changed or share >= SATURATION_WARNING_SHARE else "info",
            artifact=name,
        )


# --------------------------------------------------------------------------- the export


def _eval_inputs(ctx: StepContext) -> list[np.ndarray]:
    from compress.intake.data import synthetic_inputs

    if ctx.data is not None:
        return ctx.data.eval.x
    specs = ctx.recipe.model.input_specs() or []
    return synthetic_inputs(specs, 64, ctx.recipe.seed).x


def _sample_args(module: Any, ctx: StepContext) -> tuple[Any, ...]:
    from compress.intake.models import example_inputs

    specs = ctx.recipe.model.input_specs() or []
    # Apps run one input at a time: the recipe's batch (normally 1) on each batch axis, unless
    # the model fixes its own; fixed inputs as given.
    batched = [s for s in specs if s.batch_axis is not None]
    declared = batched[0].shape[batched[0].batch_axis] if batched else 1
    batch = getattr(module, "_edgepack_static_batch", None) or (declared if declared > 0 else 1)
    return tuple(example_inputs(specs, batch=batch, seed=ctx.recipe.seed))


def _write(dest: Path, data: bytes) -> None:
    atomic_write_with(dest, lambda tmp: tmp.write_bytes(data))


def export_tflite(artifact: Artifact, config: TfliteExportConfig, ctx: StepContext) -> StepResult:
    """Convert the torch artifact to one ``.tflite`` per precision in ``config.precisions``.

    Raises:
        MissingDependencyError: litert-torch or ai-edge-quantizer is not installed.
        StepError: the model is not a torch module, or the converter cannot lower an op
            (the message names the op and the layer).
    """
    if artifact.format != "torch" or artifact.module is None:
        raise StepError(STEP, f"TFLite export converts PyTorch models; this run's model is {artifact.format} "
                              "(give model.factory, exported or pickle)")
    notes = Notes(ctx)
    log_path = ctx.step_dir / "converter.log"
    with captured_output(log_path):  # importing it logs from C++ (oneDNN, absl) to stderr
        litert_torch = _import_converter()
    import torch

    from bench.agent import num_samples
    from bench.runtime import open_model, predict
    from compress.intake.models import set_mode, torch_predict
    from export.tflite_inspect import inspect_tflite

    module = artifact.module
    set_mode(module, False)
    sample = _sample_args(module, ctx)
    with torch.no_grad():
        probe = module(*sample)
    probe_out = list(probe) if isinstance(probe, (tuple, list)) else [probe]
    nhwc_in = [i for i, a in enumerate(sample) if config.channels_last_io and a.dim() == 4]
    nhwc_out = [i for i, y in enumerate(probe_out) if config.channels_last_io and getattr(y, "dim", lambda: 0)() == 4]
    layout = "NHWC" if nhwc_in else "NCHW"
    convert_module, convert_args = module, sample
    if nhwc_in or nhwc_out:
        convert_module = litert_torch.to_channel_last_io(module, args=nhwc_in, outputs=nhwc_out)
        convert_args = tuple(a.permute(0, 2, 3, 1).contiguous() if i in nhwc_in else a for i, a in enumerate(sample))

    quantized_source = is_pt2e_quantized(module)
    wanted = list(dict.fromkeys(config.precisions))
    if quantized_source:
        skipped = [p for p in wanted if p != "int8"]
        if skipped:
            notes.advise("tflite_precision_skipped",
                         f"the model is already int8 (QAT); TFLite precisions {', '.join(skipped)} are not exported "
                       "from it, only int8 (its own quantization parameters, PT2E path)", severity="info")
        wanted = ["int8"] if "int8" in wanted else []
        if not wanted:
            return notes.result([])

    versions = _versions()
    common = {"layout": layout, "channels_last_inputs": nhwc_in, "channels_last_outputs": nhwc_out,
              "converter": f"litert-torch {versions.get('litert-torch', '?')}"}
    made: dict[str, tuple[bytes, dict[str, Any]]] = {}
    try:
        with captured_output(log_path), ctx.progress("convert to TFLite (litert-torch)"):
            if quantized_source:
                gm, rewrites = pt2e_for_litert(module)
                wrapped = litert_torch.to_channel_last_io(gm, args=nhwc_in, outputs=nhwc_out) if nhwc_in or nhwc_out else gm
                edge = litert_torch.convert(wrapped, convert_args, quant_config=_pt2e_quant_config())
                made["int8"] = (bytes(edge.model_content()),
                                {"quantization": "pt2e (QAT parameters, lowered by litert-torch)", "pt2e_rewrites": rewrites})
            else:
                edge = litert_torch.convert(convert_module.eval(), convert_args)
                float_bytes = bytes(edge.model_content())
                if "fp32" in wanted:
                    made["fp32"] = (float_bytes, {"quantization": "none"})
    except EdgepackError:
        raise
    except Exception as e:
        raise converter_error(e, convert_module, convert_args, log_path) from e

    calib_source = None
    if not quantized_source:
        summary = inspect_tflite(float_bytes)
        for precision in (p for p in wanted if p != "fp32"):
            calib = None
            if precision == "int8":
                calib, calib_source = _calibration_inputs(ctx, notes, config, nhwc_in)
            try:
                with captured_output(log_path), ctx.progress(f"quantize TFLite {precision} (ai-edge-quantizer)"):
                    data = quantize_float_model(float_bytes, precision, calib, summary.signature_inputs,
                                                summary.signature, [t.dtype for t in summary.inputs])
            except EdgepackError:
                raise
            except Exception as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise StepError(STEP, f"ai-edge-quantizer could not make the {precision} model: "
                                      f"{type(e).__name__}: {first} (log: {log_path})") from e
            how = {"fp16": "float16 weights (ai-edge-quantizer float casting)",
                   "dynamic_int8": "int8 weights, dynamic int8 activations (ai-edge-quantizer dynamic_wi8_afp32)",
                   "int8": "static int8 weights and activations (ai-edge-quantizer static_wi8_ai8)"}[precision]
            extra: dict[str, Any] = {"quantization": how, "quantizer": f"ai-edge-quantizer {versions.get('ai-edge-quantizer', '?')}"}
            if calib is not None:
                extra.update(calibration_samples=num_samples(calib), calibration_source=calib_source)
            made[precision] = (data, extra)

    results: list[Artifact] = []
    eval_x = _eval_inputs(ctx)
    reference: list[np.ndarray] | None = None
    for precision in wanted:
        data, extra = made[precision]
        dest = ctx.step_dir / f"model-{precision}.tflite"
        _write(dest, data)
        info = inspect_tflite(data)
        meta = {**common, **extra, **info.as_metadata()}
        name = f"tflite-{precision}"
        if precision == "int8" and any(t.quantization for t in info.outputs):
            with captured_output(log_path):
                outs = from_model_layout(meta, predict(open_model(dest), to_model_layout(meta, eval_x)))
            found = output_saturation(outs, [{"dtype": t.dtype, "quantization": t.quantization} for t in info.outputs])
            meta["output_saturation"] = found
            if reference is None:
                reference = torch_predict(module, eval_x)
            _advise_saturation(ctx, notes, name, found, outs, reference, calib_source or "QAT-trained ranges")
        results.append(artifact.derive(name=name, format="tflite", path=dest, module=None, step=STEP,
                                       config_hash=config_hash(config), precision=precision, metadata={
                                           **{k: v for k, v in artifact.metadata.items() if not k.startswith("_")},
                                           **meta}))
        ctx.log(f"  {name}: {len(data)} bytes, inputs {', '.join(t.dtype for t in info.inputs)}, "
                f"outputs {', '.join(t.dtype for t in info.outputs)}, layout {layout}")
    notes.details.update({"precisions": wanted, "layout": layout, "converter_log": str(log_path)})
    return notes.result(results)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("litert-torch", "ai-edge-quantizer", "ai-edge-litert"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
