"""Data intake: built-in sets, .npz arrays, or a user function; fixed splits by seed."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.errors import InputFileError
from compress.recipe import DataSpec


@dataclass
class Split:
    """Inputs (one array per model input, batch first) and optional targets."""

    x: list[np.ndarray]
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x[0].shape[0])

    def take(self, idx: np.ndarray | slice) -> Split:
        return Split([a[idx] for a in self.x], None if self.y is None else self.y[idx])

    def batches(self, batch_size: int) -> Iterator[list[np.ndarray]]:
        for i in range(0, len(self), batch_size):
            yield [a[i : i + batch_size] for a in self.x]


@dataclass
class Dataset:
    """Train, calibration and eval splits, fixed by the recipe's seed."""

    train: Split
    calib: Split
    eval: Split
    source: str

    @property
    def has_labels(self) -> bool:
        return self.train.y is not None and len(self.train) > 0

    def num_classes(self) -> int | None:
        if self.train.y is None or not np.issubdtype(self.train.y.dtype, np.integer):
            return None
        return int(max(self.train.y.max(), self.eval.y.max() if self.eval.y is not None else 0)) + 1


def _digits() -> tuple[np.ndarray, np.ndarray]:
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


def import_ref(ref: str) -> Any:
    """Import ``/abs/file.py:function`` or ``package.module:function``."""
    mod_name, _, fn = ref.rpartition(":")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        name = f"edgepack_user_{path.stem}_{abs(hash(str(path)))}"
        if name in sys.modules:
            module = sys.modules[name]
        else:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise InputFileError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[name]
                raise InputFileError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise InputFileError(f"cannot import module {mod_name!r}: {e}") from e
    if not hasattr(module, fn):
        raise InputFileError(f"{mod_name} has no function {fn!r}")
    return getattr(module, fn)


def _as_arrays(obj: Any, where: str) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Accept (x, y), {'x':..., 'y':...}, an array, or an iterable of (x, y) batches."""
    if isinstance(obj, dict):
        if "x" not in obj:
            raise InputFileError(f"{where}: a data mapping needs an 'x' entry (got keys {sorted(obj)})")
        x, y = obj["x"], obj.get("y")
    elif isinstance(obj, tuple) and len(obj) == 2:
        x, y = obj
    elif isinstance(obj, np.ndarray):
        x, y = obj, None
    elif hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes)):
        xs: list[list[np.ndarray]] = []
        ys: list[np.ndarray] = []
        for batch in obj:  # a DataLoader or any iterable of (x, y) batches
            bx, by = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
            bxs = list(bx) if isinstance(bx, (tuple, list)) else [bx]
            xs.append([np.asarray(t.numpy() if hasattr(t, "numpy") else t) for t in bxs])
            if by is not None:
                ys.append(np.asarray(by.numpy() if hasattr(by, "numpy") else by))
        if not xs:
            raise InputFileError(f"{where}: the data loader yielded no batches")
        x = [np.concatenate([b[i] for b in xs]) for i in range(len(xs[0]))]
        y = np.concatenate(ys) if ys else None
    else:
        raise InputFileError(f"{where}: expected (x, y), a dict with x/y, an array or a DataLoader, got {type(obj).__name__}")
    xl = [np.asarray(a) for a in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]
    if not xl:
        raise InputFileError(f"{where}: x is an empty list; give one array per model input")
    for i, a in enumerate(xl):
        check_numeric_array(a, f"{where}: x" + (f"[{i}]" if len(xl) > 1 else ""))
        if len(a) != len(xl[0]):
            raise InputFileError(f"{where}: x[0] has {len(xl[0])} samples but x[{i}] has {len(a)}")
    xl = [a.astype(np.float32) if a.dtype == np.float64 else a for a in xl]
    ya = None if y is None else np.asarray(y)
    if ya is not None:
        check_numeric_array(ya, f"{where}: y")
        if len(ya) != len(xl[0]):
            raise InputFileError(f"{where}: x has {len(xl[0])} samples but y has {len(ya)}")
    return xl, ya


def check_numeric_array(a: np.ndarray, what: str) -> None:
    """Refuse what no model can take: scalars, strings, objects (batch-first numbers only)."""
    if a.ndim == 0:
        raise InputFileError(f"{what} is a single value; expected an array with one row per sample")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise InputFileError(f"{what} has dtype {a.dtype}; expected numbers (float32 inputs, integer labels)")


def _read_npz(path: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if "x" in keys:
                x = [z["x"]]
            else:
                xk = sorted((k for k in keys if k.startswith("x") and k[1:].isdigit()), key=lambda k: int(k[1:]))
                if not xk:
                    raise InputFileError(f"{path}: needs an array 'x' (or x0, x1, ...); found {sorted(keys)}")
                x = [z[k] for k in xk]
            y = z["y"] if "y" in keys else None
    except InputFileError:
        raise
    except Exception as e:
        raise InputFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    return _as_arrays({"x": x, "y": y}, str(path))


def load_dataset(spec: DataSpec) -> Dataset:
    """Load the recipe's data and split it into train / calibration / eval by seed."""
    src = spec.source
    if src.startswith("builtin:"):
        x0, y = BUILTINS[src.split(":", 1)[1]]()
        x = [x0]
    elif src.endswith(".npz"):
        x, y = _read_npz(Path(src))
    else:
        fn = import_ref(src)
        try:
            obj = fn()
        except Exception as e:
            raise InputFileError(f"data function {src} raised {type(e).__name__}: {e}") from e
        x, y = _as_arrays(obj, src)
    if spec.image_size is not None:
        x = [_resize(x[0], spec.image_size)] + x[1:]
    n = len(x[0])
    if n < 2:
        raise InputFileError(f"data {src}: need at least 2 samples, got {n}")
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(n)
    n_eval = max(1, int(round(n * spec.eval_fraction)))
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    if spec.max_eval is not None:
        eval_idx = eval_idx[: spec.max_eval]
    full = Split(x, y)
    train = full.take(train_idx)
    calib = train.take(np.arange(min(spec.calibration_samples, len(train))))
    return Dataset(train=train, calib=calib, eval=full.take(eval_idx), source=src)


def synthetic_inputs(shapes: list[tuple[list[int], str]], n: int, seed: int = 0) -> Split:
    """Random inputs for a model without data (benchmarks and parity only)."""
    rng = np.random.default_rng(seed)
    xs = []
    for shape, dtype in shapes:
        full = [n] + list(shape[1:])
        if dtype.startswith("int"):
            xs.append(rng.integers(0, 100, size=full).astype(dtype))
        else:
            xs.append(rng.standard_normal(full).astype(np.float32))
    return Split(xs, None)


def input_mismatches(expected: list[tuple[list[int], str | None]], x: list[np.ndarray]) -> list[str]:
    """Why arrays cannot feed a model's inputs: count, per-sample shape, dtype; empty when they can.

    Args:
        expected: (shape with batch first, dtype name or None to skip the dtype) per model
            input; a dim <= 0 is free (dynamic).
        x: One array per input, batch first.
    """
    if len(x) != len(expected):
        return [f"the model takes {len(expected)} input(s), the data gives {len(x)}"]
    problems = []
    for i, ((shape, dtype), a) in enumerate(zip(expected, x)):
        name = f"input {i}" if len(x) > 1 else "the input"
        want, got = list(shape[1:]), list(a.shape[1:])
        if len(want) != len(got) or any(0 < w != g for w, g in zip(want, got)):
            shown = "(" + ", ".join(str(w) if w > 0 else "?" for w in want) + ("," if len(want) == 1 else "") + ")"
            problems.append(f"{name}: the model takes samples of shape {shown}, the data has {tuple(got)} (arrays of shape {tuple(a.shape)})")
        if dtype is not None and str(a.dtype) != dtype:
            problems.append(f"{name}: the model takes {dtype}, the data is {a.dtype}")
    return problems
