"""Data intake: built-in sets, .npz arrays, or a user function; fixed splits by seed."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.agent import ModelInputs, batch_axes_of, concat_samples, num_samples, take_samples
from compress.core.errors import InputFileError, UserCodeError
from compress.intake.recipe import DataSpec, InputSpec
from compress.intake.usercode import DEFAULT_TIMEOUT_S, call_user


@dataclass
class Split:
    """Inputs (one array per model input) and optional labels.

    ``batch_axes[i]`` is the axis along which input ``i`` holds samples (0 or 1), or ``None``
    for a fixed input (a scalar, a state shared by the batch) that every call gets whole:
    ``len``, ``take`` and ``batches`` slice along those axes and never slice or stack a fixed
    input. ``x`` is a :class:`~bench.agent.ModelInputs`, so the axes travel with the arrays.
    ``y`` is the primary label array; ``targets`` holds labels by output name (``y_<name>``).
    """

    x: list[np.ndarray]
    y: np.ndarray | None = None
    batch_axes: list[int | None] | None = None
    names: list[str] | None = None
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        axes = self.batch_axes if self.batch_axes is not None else batch_axes_of(self.x)
        self.x = ModelInputs(self.x, axes)
        self.batch_axes = list(axes)

    def __len__(self) -> int:
        return num_samples(self.x)

    def take(self, idx: np.ndarray | slice) -> Split:
        return Split(take_samples(self.x, idx), None if self.y is None else self.y[idx], self.batch_axes, self.names,
                     {k: v[idx] for k, v in self.targets.items()})

    def batches(self, batch_size: int) -> Iterator[list[np.ndarray]]:
        for i in range(0, len(self), batch_size):
            yield take_samples(self.x, slice(i, i + batch_size))


@dataclass
class Dataset:
    """Train, calibration and eval splits, fixed by the recipe's seed."""

    train: Split
    calib: Split
    eval: Split
    source: str
    inputs: list[InputSpec] | None = None


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, scaled to [0, 1], as ``(N, 1, 8, 8)`` float32 and int64 labels.

    Read straight from the CSV scikit-learn ships (what ``load_digits`` reads), without importing
    scikit-learn (1.5 s on 2 cores, a fifth of a cached run); ``load_digits`` when the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
            x = (table[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[:, None, :, :]
            return x, table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return x, d.target.astype(np.int64)


BUILTINS = {"digits": _digits}


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of NCHW images to ``size`` x ``size``."""
    if x.ndim != 4:
        raise InputFileError(f"data.image_size needs 4-d image inputs (N, C, H, W), got shape {x.shape}")
    from scipy.ndimage import zoom

    factors = (1, 1, size / x.shape[2], size / x.shape[3])
    return zoom(x, factors, order=1).astype(np.float32)


class UserFunction:
    """A user function found by :func:`import_ref`; calling it runs it under :func:`~compress.intake.usercode.call_user`.

    Attributes:
        fn: The function itself.
        ref: The reference it was imported from (``/abs/file.py:function``).
    """

    def __init__(self, fn: Any, ref: str, what: str, timeout_s: float | None, setting: str | None) -> None:
        self.fn, self.ref, self.what, self.timeout_s, self.setting = fn, ref, what, timeout_s, setting

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return call_user(self.fn, args, kwargs, what=f"{self.what} {self.ref}", timeout_s=self.timeout_s,
                         setting=self.setting)


def import_ref(ref: str, what: str = "function", timeout_s: float | None = DEFAULT_TIMEOUT_S,
               setting: str | None = None) -> UserFunction:
    """Import ``/abs/file.py:function`` or ``package.module:function``.

    The module's own code runs under :func:`~compress.intake.usercode.call_user` (an import that
    exits, raises or hangs is a :class:`~compress.core.errors.UserCodeError`), and so does every
    call of the returned function.

    Args:
        ref: The reference, as the validated recipe holds it.
        what: Names the function in messages (``model factory``, ``data function``, ``student``).
        timeout_s: Seconds the import, and each call, may take.
        setting: The recipe key of the timeout, for the timeout message.
    """
    mod_name, _, fn = ref.rpartition(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        name = f"edgepack_user_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        if name in sys.modules:
            module = sys.modules[name]
        else:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise InputFileError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                call_user(spec.loader.exec_module, (module,), what=f"importing {path}", timeout_s=timeout_s,
                          setting=setting)
            except BaseException:
                sys.modules.pop(name, None)
                raise
    else:
        try:
            module = call_user(importlib.import_module, (mod_name,), what=f"importing module {mod_name!r}",
                               timeout_s=timeout_s, setting=setting)
        except UserCodeError as e:
            if isinstance(e.__cause__, ImportError):
                raise InputFileError(f"cannot import module {mod_name!r}: {e.__cause__}") from e.__cause__
            raise
    if not callable(getattr(module, fn, None)):
        if not hasattr(module, fn):
            raise InputFileError(f"{mod_name} has no function {fn!r}")
        raise InputFileError(f"{mod_name}:{fn} is a {type(getattr(module, fn)).__name__}, not a function")
    return UserFunction(getattr(module, fn), ref, what, timeout_s, setting)


def _np(t: Any) -> np.ndarray:
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _as_arrays(obj: Any, where: str, specs: list[InputSpec] | None = None) -> tuple[ModelInputs, np.ndarray | None]:
    """Accept (x, y), a dict, an array, or an iterable of (x, y) batches; see :func:`_as_split`."""
    split = _as_split(obj, where, specs)
    return ModelInputs(split.x, split.batch_axes), split.y


def _as_split(obj: Any, where: str, specs: list[InputSpec] | None = None) -> Split:
    """The data a function returned (or an .npz held), matched to the model's inputs.

    Accepted: ``(x, y)``; a dict with ``x`` (an array, a list by position, or a dict by input
    name), or with arrays named ``x_<input>`` or by the input names themselves, plus ``y`` and
    ``y_<output>`` labels; a bare array; or an iterable of ``(x, y)`` batches (a DataLoader).
    """
    targets: dict[str, np.ndarray] = {}
    if isinstance(obj, dict):
        named = {k: v for k, v in obj.items() if k not in ("x", "y") and not str(k).startswith("y_")}
        if "x" not in obj and not named:
            raise InputFileError(f"{where}: a data mapping needs an 'x' entry or arrays named by the model's inputs "
                                 f"(got keys {sorted(obj)})")
        x: Any = obj["x"] if "x" in obj else named
        if "x" in obj and named and specs is not None:
            x = {"x": obj["x"], **named}  # an input named x beside others
        y = obj.get("y")
        targets = {str(k)[2:]: _np(v) for k, v in obj.items() if str(k).startswith("y_")}
    elif isinstance(obj, tuple) and len(obj) == 2:
        x, y = obj
    elif isinstance(obj, np.ndarray):
        x, y = obj, None
    elif hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes)):
        x, y = _from_batches(obj, where, specs)
    else:
        raise InputFileError(f"{where}: expected (x, y), a dict with x/y, an array or a DataLoader, got {type(obj).__name__}")
    if isinstance(x, dict):
        arrays, names = _match_named({str(k): _np(v) for k, v in x.items()}, specs, where)
    else:
        arrays = [_np(a) for a in x] if isinstance(x, (list, tuple)) else [_np(x)]
        names = [s.name for s in specs] if specs is not None and len(specs) == len(arrays) else None
    if not arrays:
        raise InputFileError(f"{where}: x is an empty list; give one array per model input")
    if specs is not None and len(specs) != len(arrays):
        raise InputFileError(f"{where}: the model takes {len(specs)} input(s) "
                             f"({', '.join(s.name for s in specs)}), the data gives {len(arrays)}")
    axes = [s.batch_axis for s in specs] if specs is not None else [0] * len(arrays)
    for i, (a, ax) in enumerate(zip(arrays, axes)):
        what = f"{where}: " + (f"input {names[i]!r}" if names else "x" + (f"[{i}]" if len(arrays) > 1 else ""))
        check_numeric_array(a, what, fixed=ax is None)
        if ax is not None and a.ndim <= ax:
            raise InputFileError(f"{what} has shape {a.shape}; its samples lie along axis {ax} (batch_axis)")
    arrays = [a.astype(np.float32) if a.dtype == np.float64 else a for a in arrays]
    split = Split(arrays, None, axes, names)
    n = len(split)
    for i, (a, ax) in enumerate(zip(arrays, axes)):
        if ax is not None and a.shape[ax] != n:
            first = next(j for j, b in enumerate(axes) if b is not None)
            raise InputFileError(f"{where}: x[{first}] has {n} samples but x[{i}] has {a.shape[ax]}")
    for what, lab in [("y", y)] + [(f"y_{k}", v) for k, v in targets.items()]:
        if lab is None:
            continue
        lab = _np(lab)
        check_numeric_array(lab, f"{where}: {what}")
        if len(lab) != n:
            raise InputFileError(f"{where}: x has {n} samples but {what} has {len(lab)}")
    split.y = None if y is None else _np(y)
    split.targets = targets
    return split


def _from_batches(obj: Any, where: str, specs: list[InputSpec] | None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Inputs and labels of a DataLoader (or any iterable of (x, y) batches), joined along each batch axis."""
    xs: list[list[np.ndarray]] = []
    ys: list[np.ndarray] = []
    for batch in obj:
        bx, by = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
        xs.append([_np(t) for t in (list(bx) if isinstance(bx, (tuple, list)) else [bx])])
        if by is not None:
            ys.append(_np(by))
    if not xs:
        raise InputFileError(f"{where}: the data loader yielded no batches")
    axes = [s.batch_axis for s in specs] if specs is not None and len(specs) == len(xs[0]) else [0] * len(xs[0])
    return list(concat_samples(xs, axes)), (np.concatenate(ys) if ys else None)


def _match_named(found: dict[str, np.ndarray], specs: list[InputSpec] | None, where: str) -> tuple[list[np.ndarray], list[str] | None]:
    """Arrays for the model's inputs by name: ``x_<name>`` or ``<name>``; else ``x`` / ``x0, x1...`` by position."""
    if specs is not None and any(f"x_{s.name}" in found or s.name in found for s in specs):
        arrays = []
        for i, s in enumerate(specs):
            key = f"x_{s.name}" if f"x_{s.name}" in found else s.name if s.name in found else None
            if key is None:
                raise InputFileError(f"{where}: no array for model input {s.name!r} (model.inputs[{i}]): name it "
                                     f"x_{s.name} or {s.name}; found {sorted(found)}")
            arrays.append(found[key])
        return arrays, [s.name for s in specs]
    if "x" in found:
        return [found["x"]], [specs[0].name] if specs is not None and len(specs) == 1 else None
    positional = sorted((k for k in found if k[:1] == "x" and k[1:].isdigit()), key=lambda k: int(k[1:]))
    if positional:
        arrays = [found[k] for k in positional]
        return arrays, [s.name for s in specs] if specs is not None and len(specs) == len(arrays) else None
    named = sorted(k for k in found if k.startswith("x_"))
    if specs is None and named:
        return [found[k] for k in named], [k[2:] for k in named]
    wanted = ", ".join(f"x_{s.name}" for s in specs) if specs is not None else "x (or x0, x1, ...)"
    raise InputFileError(f"{where}: no model inputs found: expected {wanted}; found {sorted(found)}")


def check_numeric_array(a: np.ndarray, what: str, fixed: bool = False) -> None:
    """Refuse what no model can take: strings, objects, and (unless ``fixed``) scalars.

    Args:
        fixed: The array feeds a fixed input (``batch_axis: null``), which may be a scalar.
    """
    if a.ndim == 0 and not fixed:
        raise InputFileError(f"{what} is a single value; expected an array with one row per sample")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise InputFileError(f"{what} has dtype {a.dtype}; expected numbers (float32 inputs, integer labels)")
    if np.iscomplexobj(a):
        raise InputFileError(f"{what} has dtype {a.dtype}; complex numbers are not model inputs or labels")
    bad = describe_nonfinite(a)
    if bad is not None:
        raise InputFileError(f"{what} has {bad}; clean the data (NaN or inf would poison training, "
                             "calibration and every metric)")


def describe_nonfinite(a: np.ndarray) -> str | None:
    """``"3 NaN and 1 infinite value(s) of 800 (first at index (5, 0, 2))"``, or None when all are finite."""
    if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    nan = int(np.isnan(a).sum())
    inf = int(a.size - finite.sum()) - nan
    first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), a.shape)) if a.ndim else ()
    where = f" (first at index {first})" if first else ""
    return f"{nan} NaN and {inf} infinite value(s) of {a.size:,}{where}"


def read_npz(path: Path, specs: list[InputSpec] | None = None) -> Split:
    """Every array of an .npz matched to the model's inputs (by name or position) and labels."""
    try:
        with np.load(path, allow_pickle=False) as z:
            found = {k: z[k] for k in z.files}
    except Exception as e:
        raise InputFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    if not any(k == "x" or k.startswith("x") or (specs is not None and k in {s.name for s in specs}) for k in found):
        raise InputFileError(f"{path}: needs an array 'x' (or x0, x1, ..., or x_<input name>); found {sorted(found)}")
    return _as_split(found, str(path), specs)


def load_npz_data(path: Path, inputs: list[dict[str, Any]] | None = None) -> tuple[list[Any], Any]:
    """Inputs and optional labels ``y`` of an .npz file (``compress bench --data``, ``compress shadow --inputs``).

    Inputs are ``x`` or ``x0``, ``x1``... by position, or named ``x_<input>`` or by the
    model's input names (``inputs``: the model's declared inputs, rank-0 ones fixed).
    """
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    specs = None
    if inputs is not None:
        specs = [InputSpec.model_construct(name=i["name"], shape=list(i["shape"]), dtype=i["dtype"],
                                           batch_axis=0 if i["shape"] else None, dynamic={}) for i in inputs]
    split = read_npz(path, specs)
    return split.x, split.y


def resolve_dynamic(specs: list[InputSpec], split: Split) -> None:
    """Fill each spec's ``dynamic`` with the data's size of its -1 axes (batch axis excluded).

    In place, on purpose: the recipe's ``model.inputs`` then describe the real shapes for
    every later user (export, calibration, bundles, payload sizes). The data's size wins
    over a ``dynamic`` size the recipe gives.
    """
    for spec, a in zip(specs, split.x):
        if np.ndim(a) != len(spec.shape):
            raise InputFileError(f"input {spec.name!r}: model.inputs gives {len(spec.shape)} axes {spec.shape}, "
                                 f"the data has {np.ndim(a)} {tuple(np.shape(a))}")
        for axis, d in enumerate(spec.shape):
            if d == -1 and axis != spec.batch_axis:
                spec.dynamic[axis] = int(np.shape(a)[axis])


def load_dataset(spec: DataSpec, inputs: list[InputSpec] | None = None) -> Dataset:
    """Load the recipe's data and split it into train / calibration / eval by seed.

    Args:
        spec: The recipe's data section.
        inputs: The model's inputs: arrays are matched to them by name (or position), fixed
            inputs (``batch_axis: null``) are never split, and their -1 dims are resolved
            from the data (see :func:`resolve_dynamic`). None: every array is batch-first.
    """
    src = spec.source
    if src.startswith("builtin:"):
        x0, y = BUILTINS[src.split(":", 1)[1]]()
        full = _as_split((x0, y), src, inputs)
    elif src.endswith(".npz"):
        full = read_npz(Path(src), inputs)
    else:
        fn = import_ref(src, "data function", spec.timeout_s, "data.timeout_s")
        # a DataLoader runs user code as it is iterated: the timeout covers reading it all
        full = call_user(lambda: _as_split(fn.fn(), src, inputs), what=f"data function {src}",
                         timeout_s=spec.timeout_s, setting="data.timeout_s")
    if spec.image_size is not None:
        first = next(i for i, ax in enumerate(full.batch_axes or []) if ax is not None)
        xs = list(full.x)
        xs[first] = _resize(xs[first], spec.image_size)
        full = Split(xs, full.y, full.batch_axes, full.names, full.targets)
    if inputs is not None:
        resolve_dynamic(inputs, full)
    n = len(full)
    if n < 2:
        raise InputFileError(f"data {src}: need at least 2 samples, got {n}")
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(n)
    n_eval = max(1, int(round(n * spec.eval_fraction)))
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    if spec.max_eval is not None:
        eval_idx = eval_idx[: spec.max_eval]
    train = full.take(train_idx)
    calib = train.take(np.arange(min(spec.calibration_samples, len(train))))
    return Dataset(train=train, calib=calib, eval=full.take(eval_idx), source=src, inputs=inputs)


def _random_array(rng: np.random.Generator, shape: list[int], dtype: str) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("int", "uint")):
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype if dtype.startswith("float") else np.float32)


def synthetic_inputs(specs: list[InputSpec] | list[tuple[list[int], str]], n: int, seed: int = 0) -> Split:
    """Random inputs for a model without data (benchmarks and parity only).

    Args:
        specs: The model's inputs, or (shape with batch first, dtype) pairs.
        n: Samples, along each input's batch axis; fixed inputs get their own shape.

    Raises:
        InputFileError: a dimension is dynamic (-1) and nothing gives its size.
    """
    rng = np.random.default_rng(seed)
    xs, axes, names = [], [], []
    for i, item in enumerate(specs):
        spec = item if isinstance(item, InputSpec) else InputSpec(
            name=f"input{i}", shape=list(item[0]), dtype=item[1], batch_axis=0 if len(item[0]) else None)
        shape = spec.resolved_shape(n)
        unknown = [axis for axis, d in enumerate(shape) if d < 0]
        if unknown:
            raise InputFileError(f"input {spec.name!r} (model.inputs[{i}]) has dynamic axis {unknown[0]} in shape "
                                 f"{spec.shape} and no data gives its size: add model.inputs[{i}].dynamic: "
                                 f"{{{unknown[0]}: SIZE}} or a data section")
        xs.append(_random_array(rng, shape, spec.dtype))
        axes.append(spec.batch_axis)
        names.append(spec.name)
    return Split(xs, None, axes, names)


def input_mismatches(expected: list[tuple[list[int], str | None]] | list[InputSpec], x: list[np.ndarray],
                     batch_axes: list[int | None] | None = None) -> list[str]:
    """Why arrays cannot feed a model's inputs: count, shape apart from the batch, dtype; empty when they can.

    Args:
        expected: The model's inputs, or (shape, dtype name or None to skip the dtype) per
            input; a dim <= 0 is free (dynamic).
        x: One array per input.
        batch_axes: The batch axis of each input (None: fixed, compared whole); default:
            the specs' own, else those ``x`` carries, else 0.
    """
    if len(x) != len(expected):
        return [f"the model takes {len(expected)} input(s), the data gives {len(x)}"]
    pairs = [(e.shape, e.dtype, e.name) if isinstance(e, InputSpec) else (e[0], e[1], None) for e in expected]
    if batch_axes is None:
        batch_axes = ([e.batch_axis for e in expected] if all(isinstance(e, InputSpec) for e in expected)
                      else batch_axes_of(x))
    problems = []
    for i, ((shape, dtype, name), a, ax) in enumerate(zip(pairs, x, batch_axes)):
        label = f"input {name!r}" if name and len(x) > 1 else f"input {i}" if len(x) > 1 else "the input"
        want = [d for k, d in enumerate(shape) if k != ax]
        got = [d for k, d in enumerate(np.shape(a)) if k != ax]
        if len(shape) != np.ndim(a) or any(0 < w != g for w, g in zip(want, got)):
            shown = "(" + ", ".join(str(w) if w > 0 else "?" for w in want) + ("," if len(want) == 1 else "") + ")"
            what = "takes samples of shape" if ax is not None else "takes (fixed) shape"
            problems.append(f"{label}: the model {what} {shown}, the data has {tuple(got)} "
                            f"(arrays of shape {tuple(np.shape(a))})")
        if dtype is not None and str(a.dtype) != dtype:
            problems.append(f"{label}: the model takes {dtype}, the data is {a.dtype}")
    return problems
