"""Model intake: a factory plus weights, a torch.export program, an ONNX file, or a pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compress.core.types import Artifact
from compress.intake.data import import_ref
from compress.core.errors import InputFileError
from compress.intake.recipe import InputSpec, ModelSpec
from compress.intake.usercode import call_user


def _load_state_dict(path: Path) -> dict[str, Any]:
    import pickle

    import zipfile

    import torch

    with open(path, "rb") as f:
        head = f.read(1)
    # torch.save writes a zip (or, in the legacy format, a pickle: protocol byte 0x80)
    if not zipfile.is_zipfile(path) and head != b"\x80":
        raise InputFileError(f"{path}: not a file written by torch.save (corrupt, truncated or another format)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputFileError(
            f"{path}: not a plain state_dict (weights_only=True refused it: {str(e).splitlines()[0]}). "
            "Save the weights with torch.save(model.state_dict(), path)."
        ) from e
    except Exception as e:
        raise InputFileError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputFileError(f"{path}: expected a state_dict (a mapping of tensors), got {type(obj).__name__}")
    return obj


def _from_factory(spec: ModelSpec) -> Any:
    import torch

    fn = import_ref(spec.factory or "", "model factory", spec.timeout_s, "model.timeout_s")
    module = fn(**spec.kwargs)
    if not isinstance(module, torch.nn.Module):
        raise InputFileError(f"model factory {spec.factory} returned {type(module).__name__}, not a torch.nn.Module")
    if spec.weights is not None:
        state = _load_state_dict(spec.weights)
        result = module.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[0]})")
            if result.unexpected_keys:
                parts.append(f"unexpected {len(result.unexpected_keys)} keys (e.g. {result.unexpected_keys[0]})")
            raise InputFileError(
                f"{spec.weights} does not match the model from {spec.factory}: " + "; ".join(parts)
            )
    return module


def load_model(spec: ModelSpec) -> Artifact:
    """Load the recipe's model as the run's first artifact (``baseline``).

    Raises:
        InputFileError: when the file is missing, corrupt or of the wrong kind.
    """
    kind = spec.source_kind
    if kind == "onnx":
        import onnx

        path = Path(spec.onnx or "")
        try:
            model = onnx.load(str(path), load_external_data=False)
            onnx.checker.check_model(model)
        except Exception as e:
            raise InputFileError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        return Artifact(name="baseline", format="onnx", path=path, step="input")

    import torch

    if kind == "factory":
        module = _from_factory(spec)
    elif kind == "exported":
        path = Path(spec.exported or "")
        try:
            program = _load_exported(path)
            module = program.module()
        except Exception as e:
            raise InputFileError(f"{path}: not a torch.export program ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        batch = _static_batch(program)
        if batch is not None:
            module._edgepack_static_batch = batch
    else:
        path = Path(spec.pickle or "")
        # unpickling runs code the pickle names: guarded like a factory (exit, BaseException, hang)
        module = call_user(torch.load, (path,), {"map_location": "cpu", "weights_only": False},
                           what=f"{path}: unpickling the model", timeout_s=spec.timeout_s, setting="model.timeout_s")
        if not isinstance(module, torch.nn.Module):
            raise InputFileError(f"{path}: the pickle holds a {type(module).__name__}, not a torch.nn.Module")
    set_mode(module, training=False)
    return Artifact(name="baseline", format="torch", module=module, step="input",
                    metadata={"source": kind})


def _load_exported(path: Path) -> Any:
    """``torch.export.load`` without its logged traceback: a bad file is reported once, as our error."""
    import logging
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        raise ValueError("not a zip archive (a .pt2 file is one)")
    # torch logs a full traceback (as a warning) before trying an older format
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return torch.export.load(str(path))
    except RuntimeError as e:
        if "warnings above" not in str(e):
            raise
        # the details were in the silenced warning; say what it amounts to
        raise ValueError("the archive holds no exported program this torch can read "
                         "(write it with torch.export.save)") from e
    finally:
        logger.setLevel(level)


def _static_batch(program: Any) -> int | None:
    """The fixed batch size of an exported program's first input, or None if dynamic."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None and val.dim() > 0 and isinstance(val.shape[0], int):
                return int(val.shape[0])
            return None
    return None


def set_mode(module: Any, training: bool) -> None:
    """``module.train(training)``, also for exported programs' modules (whose train() raises)."""
    try:
        module.train(training)
    except NotImplementedError:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if training else move_exported_model_to_eval)(module)
        module.training = training


def unresolved_inputs(specs: list[InputSpec]) -> list[tuple[int, InputSpec, int]]:
    """(index, spec, axis) of every dynamic dimension nothing has given a size yet."""
    return [(i, s, axis) for i, s in enumerate(specs) for axis in s.dynamic_axes]


def _check_resolved(specs: list[InputSpec]) -> None:
    missing = unresolved_inputs(specs)
    if missing:
        i, s, axis = missing[0]
        raise InputFileError(f"input {s.name!r} (model.inputs[{i}]) has dynamic axis {axis} in shape {s.shape} and "
                             f"nothing gives its size: add model.inputs[{i}].dynamic: {{{axis}: SIZE}} or data")


def ties_batch_to_one(specs: list[InputSpec]) -> bool:
    """Whether a fixed input carries a batch of one (a state ``[2, 1, 128]``), so the model runs one sample at a time.

    Same rule as :func:`bench.agent.batch_tied`: a fixed input (``batch_axis: null``) with an
    axis of size 1. Such a model is exported with a static batch of 1 and run sample by sample.
    """
    return any(s.batch_axis is None and 1 in s.resolved_shape() for s in specs)


def example_inputs(specs: list[InputSpec], batch: int = 2, seed: int = 0) -> list[Any]:
    """Random example tensors for export and tracing, in the inputs' real shapes and dtypes.

    ``batch`` samples along each input's batch axis (batch 2 exports most reliably); fixed
    inputs get their own shape. Dynamic dims take the size the data or ``dynamic`` resolved.

    Raises:
        InputFileError: a dynamic dimension has no size yet.
    """
    import torch

    _check_resolved(specs)
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in specs:
        shape = s.resolved_shape(batch)
        if s.dtype.startswith("float"):
            out.append(torch.randn(*shape, generator=g).to(getattr(torch, s.dtype)))
        elif s.dtype == "bool":
            out.append(torch.randint(0, 2, shape, generator=g).bool())
        else:
            out.append(torch.randint(0, 100, shape, generator=g, dtype=getattr(torch, s.dtype)))
    return out


def inputs_from_split(x: list[np.ndarray], n: int) -> list[Any]:
    """The first ``n`` samples as tensors (fixed inputs whole)."""
    import torch

    from bench.agent import take_samples

    return [torch.from_numpy(np.ascontiguousarray(a)) for a in take_samples(x, slice(0, n))]


def torch_predict(module: Any, x: list[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    """Run a torch module over inputs in batches; return every output as numpy.

    Batches run along each input's batch axis (carried by a :class:`~bench.agent.ModelInputs`);
    fixed inputs are fed whole to every call. A module with a fixed batch, or one whose fixed
    input carries a batch of one (a state ``[2, 1, 128]``, see :func:`bench.agent.batch_tied`),
    runs sample by sample. Outputs are joined on axis 0.
    """
    import torch

    from bench.agent import batch_tied, num_samples, run_in_fixed_batches, take_samples

    def run_one(xs: list[np.ndarray]) -> list[np.ndarray]:
        y = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in xs])
        ys = list(y.values()) if isinstance(y, dict) else list(y) if isinstance(y, (tuple, list)) else [y]
        return [t.detach().float().numpy() if t.dtype.is_floating_point else t.numpy() for t in ys]

    static = getattr(module, "_edgepack_static_batch", None) or (1 if batch_tied(x) else None)
    outs: list[list[np.ndarray]] = []
    n = num_samples(x)
    step = static or batch_size
    with torch.inference_mode():
        for i in range(0, n, step):
            outs.append(run_in_fixed_batches(run_one, take_samples(x, slice(i, i + step)), static))
    return [np.concatenate([b[k] for b in outs]) if np.ndim(outs[0][k]) else outs[0][k] for k in range(len(outs[0]))]


def count_params(module: Any) -> int:
    # A pt2e-converted module keeps its weights as int8 constants, not parameters; the QAT
    # step records the count of the float module it was converted from.
    preset = getattr(module, "_edgepack_params", None)
    if preset is not None:
        return int(preset)
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module: Any, specs: list[InputSpec]) -> int | None:
    """Multiply-accumulates of one batch-1 inference, counted by torch-pruning's op counter."""
    # A pt2e-converted module has no nn.Conv2d / nn.Linear for the counter to hook: the QAT
    # step records the count of the float module it was converted from (same layers).
    preset = getattr(module, "_edgepack_macs", None)
    if preset is not None:
        return int(preset)
    try:
        import torch_pruning as tp

        example = example_inputs(specs, batch=1)  # batch 1 on each batch axis, fixed inputs as given
        macs, _ = tp.utils.count_ops_and_params(module, example[0] if len(example) == 1 else tuple(example))
        return int(macs)
    except Exception:
        return None


def torch_size_bytes(module: Any) -> int:
    """Bytes of the state_dict as torch.save writes it.

    For a graph module, only the tensors its graph reads: a pt2e-converted (QAT) model keeps
    its float weights as dead attributes beside the int8 copies the graph uses.
    """
    import io

    import torch

    state = module.state_dict()
    if isinstance(module, torch.fx.GraphModule):
        attrs = {str(n.target) for n in module.graph.nodes if n.op == "get_attr"}
        subs = tuple(f"{n.target}." for n in module.graph.nodes if n.op == "call_module")
        used = {k: v for k, v in state.items() if k in attrs or k.startswith(subs)}
        state = used or state
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


_ONNX_DTYPES = {"float32", "float16", "int64", "int32", "int8", "uint8", "bool"}


def onnx_input_specs(path: Path) -> list[InputSpec]:
    """The inputs an ONNX file declares, as recipe input specs.

    A symbolic (or unset) first dim is the batch (``batch_axis: 0``, size -1); other symbolic
    dims stay -1 (dynamic, to be resolved by data or ``dynamic``); a rank-0 input is fixed
    (``batch_axis: null``). A state input whose batch is not axis 0 must be described in
    ``model.inputs``.

    Raises:
        InputFileError: the file cannot be read or an input has a type no recipe can describe.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputFileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {_first_line(e)})") from e
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        if dtype not in _ONNX_DTYPES:
            raise InputFileError(f"{path}: input {inp.name!r} is {dtype}; inputs can be {', '.join(sorted(_ONNX_DTYPES))}")
        specs.append(InputSpec(name=inp.name, shape=dims, dtype=dtype, batch_axis=0 if dims else None))
    return specs


def input_specs_of(model: ModelSpec) -> list[InputSpec] | None:
    """The model's inputs: the recipe's (``inputs`` / ``input_shape``), else those an ONNX file declares."""
    specs = model.input_specs()
    if specs is not None or model.source_kind != "onnx" or model.onnx is None:
        return specs
    return onnx_input_specs(Path(model.onnx))


def intake_problems(baseline: Artifact, recipe: Any, data: Any) -> list[tuple[tuple[Any, ...], str]]:
    """Does the data fit the model and the task? Checked on two samples before any work starts.

    Catches what would otherwise fail deep in a step (or, worse, give wrong metrics without
    failing): inputs of the wrong shape or dtype, a dynamic dimension nothing resolves, a
    model that cannot run on them, a label list or class labels that do not match the
    model's outputs.

    Returns:
        (path in the recipe, message) pairs; empty when everything fits.
    """
    from bench.agent import take_samples
    from compress.intake.data import input_mismatches, synthetic_inputs

    declared = recipe.model.input_specs()
    shape_loc: tuple[Any, ...] = ("model", "inputs") if recipe.model.inputs is not None else ("model", "input_shape")
    session = None
    if baseline.format != "torch":
        from bench.runtime import open_model

        try:
            session = open_model(baseline.path)
        except Exception as e:  # noqa: BLE001  (the runtime's own words say what is wrong with the file)
            return [(("model", "onnx"), f"onnxruntime cannot load {baseline.path}: {_first_line(e)}")]
    specs = declared
    if specs is None and session is not None and baseline.path is not None:
        try:
            specs = onnx_input_specs(baseline.path)
        except InputFileError:
            specs = None
        shape_loc = ("model", "onnx")
    if data is not None:
        x = take_samples(data.eval.x, slice(0, 2))
        where = "the data"
        if declared is not None:
            wrong = input_mismatches(declared, x)
            if wrong:
                return [(shape_loc, "does not match data.source: " + "; ".join(wrong))]
        if session is not None:
            wrong = input_mismatches([(i["shape"], i["dtype"]) for i in session.inputs], x)
            if wrong:
                return [(("data", "source"), f"does not fit {baseline.path.name}: " + "; ".join(wrong))]
    elif specs is not None:
        missing = unresolved_inputs(specs)
        if missing:
            i, s, axis = missing[0]
            return [(shape_loc if declared is None else ("model", "inputs", i, "shape"),
                     f"input {s.name!r} has dynamic axis {axis} in shape {s.shape} and there is no data to resolve "
                     f"it: add model.inputs[{i}].dynamic: {{{axis}: SIZE}} (model.inputs[{i}] with name, shape, "
                     "dtype, batch_axis) or a data section")]
        x = synthetic_inputs(specs, 2, recipe.seed).x
        where = "random inputs of " + ("the model's declared shapes" if declared is None else "model.input_shape")
    else:
        return []
    try:
        if session is not None:
            outs = session.run(x)
        else:
            outs = torch_predict(baseline.module, x)
    except Exception as e:  # noqa: BLE001  (any failure here means the inputs do not fit the model)
        shapes = ", ".join(f"{tuple(np.shape(a))} {a.dtype}" for a in x)
        loc = shape_loc if specs is not None else ("data", "source")
        return [(loc, f"the model fails on {where} ({shapes}): {_first_line(e)}")]
    from compress.intake.data import describe_nonfinite

    for k, out in enumerate(outs):
        bad = describe_nonfinite(np.asarray(out))
        if bad is not None:
            return [(("model",), f"output {k} of the model has {bad} on {where}: a model that gives NaN or inf "
                                 "cannot be compared, calibrated or measured")]
    return _task_problems(recipe, data, outs[0] if outs else None)


def _task_problems(recipe: Any, data: Any, out: np.ndarray | None) -> list[tuple[tuple[Any, ...], str]]:
    task = recipe.task
    if task.kind != "classification" or out is None:
        return []
    if out.ndim != 2:
        return [(("task", "kind"), f"classification needs logits of shape (batch, classes); the model's first "
                                   f"output has shape {tuple(out.shape)}")]
    n = int(out.shape[1])
    problems: list[tuple[tuple[Any, ...], str]] = []
    binary = n == 1  # one score per sample (a sigmoid or a logit): two classes, decided by a threshold
    if binary:
        n = 2
    if task.labels is not None and len(task.labels) != n:
        problems.append((("task", "labels"), f"{len(task.labels)} labels, but the model has {n} outputs"))
    ys = [s.y for s in (data.train, data.eval) if s.y is not None and len(s.y)] if data is not None else []
    if ys:
        y = np.concatenate(ys)
        if y.ndim != 1:
            problems.append((("data", "source"), f"classification needs one class index per sample; y has shape {y.shape}"))
        elif not np.issubdtype(y.dtype, np.integer) and not np.array_equal(y, np.round(y)):
            problems.append((("data", "source"), f"classification needs integer class labels; y is {y.dtype} "
                                                 f"with fractional values (e.g. {y[y != np.round(y)][0]:g})"))
        elif y.min() < 0 or y.max() >= n:
            problems.append((("data", "source"), f"class labels run from {y.min():g} to {y.max():g}, but the model "
                                                 f"has {n} outputs (classes 0 to {n - 1})"))
    return problems


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
