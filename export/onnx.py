"""Export a torch module to ONNX with the dynamo exporter (weights inline)."""

from __future__ import annotations

import shutil

from compress.core.fileio import atomic_write_with, config_hash
from compress.core.types import Artifact
from compress.core.step import StepContext, StepResult
from compress.core.errors import StepError
from compress.intake.models import example_inputs
from compress.intake.recipe import OnnxExportConfig


def quiet_exporter_logs() -> None:
    """The exporter logs a warning per missing torchvision op, and onnxscript's constant folding
    one per node its reference evaluator cannot fold ("Evaluation failed", the node is kept
    as it is); they are noise here."""
    import logging
    import warnings

    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch._export", "torch.export",
                 "onnxscript.optimizer._constant_folding"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def strip_debug_metadata(model) -> None:
    """Drop the exporter's per-node debug metadata from an ``onnx_ir`` model.

    The dynamo exporter writes each node's Python stack trace, FX node and module path into
    ``metadata_props``: absolute paths and lines of the user's source, shipped inside every
    app that bundles the model, and most of the file for a small model (28 of 44 kB for the
    quickstart's QAT export). Nothing downstream reads them.
    """
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
    for value in model.graph.inputs:
        value.metadata_props.clear()


def export_module_to_onnx(module, specs, dest, opset: int | None = None, dynamic_batch: bool = True) -> None:
    """Write ``module`` to ``dest`` as a single ONNX file (no external data).

    Inputs keep their real shapes and dtypes (dynamic dims at the size the data resolved).
    With ``dynamic_batch``, only inputs that have a batch axis get a dynamic batch, on that
    axis; fixed inputs (``batch_axis: null``) stay static. A module with a fixed batch (from
    a static ``torch.export`` program), or one whose fixed input carries a batch of one (a
    state ``[2, 1, 128]``: see :func:`compress.intake.models.ties_batch_to_one`), is exported at a
    static batch.
    """
    import torch

    from compress.intake.models import ties_batch_to_one

    static = getattr(module, "_edgepack_static_batch", None)
    if static is None and ties_batch_to_one(specs):
        static = 1
    if static is not None:
        dynamic_batch = False
    example = tuple(example_inputs(specs, batch=static or 2))
    dynamic = None
    if dynamic_batch and any(s.batch_axis is not None for s in specs):
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic = tuple(None if s.batch_axis is None else {s.batch_axis: batch} for s in specs)
    kwargs = {"opset_version": opset} if opset else {}

    def write(tmp):
        quiet_exporter_logs()
        program = torch.onnx.export(
            module, example, dynamo=True, external_data=False, dynamic_shapes=dynamic,
            input_names=[s.name for s in specs], verbose=False, **kwargs,
        )
        strip_debug_metadata(program.model)
        program.save(str(tmp), external_data=False)

    atomic_write_with(dest, write)


def export_onnx(artifact: Artifact, config: OnnxExportConfig, ctx: StepContext) -> StepResult:
    """The ``onnx`` export: torch module -> ``model.onnx`` in the export folder."""
    dest = ctx.step_dir / "model.onnx"
    if artifact.format == "onnx":
        atomic_write_with(dest, lambda tmp: shutil.copyfile(artifact.path, tmp))
    else:
        specs = ctx.recipe.model.input_specs()
        try:
            export_module_to_onnx(artifact.module, specs, dest, config.opset, config.dynamic_batch)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StepError("export:onnx", f"torch.onnx.export failed: {type(e).__name__}: {first}") from e
    return StepResult([artifact.derive(
        name=f"onnx-{artifact.precision}",
        format="onnx", path=dest, step="export:onnx", config_hash=config_hash(config),
    )])
