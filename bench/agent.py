"""Self-contained benchmark agent: load one model, time it, print one JSON line.

This file imports nothing from edgepack, only numpy and whichever runtime is present
(onnxruntime, ai-edge-litert, or tflite_runtime as a last resort), so it can be copied to
a board over SSH or run under qemu-user as it is. The local target runs it in a fresh
process per artifact, so one model's allocator state never leaks into the next.

Usage: ``python agent.py SPEC.json`` (or ``python agent.py --serve``, a fork server that runs
one spec per request in a fresh child: :func:`serve`) where SPEC has ``model``, ``threads``, ``warmup``,
``max_warmup``, ``runs``, ``batch``, optional ``inputs`` (.npz with x0, x1, ... and
``batch_axes``: the axis of each input that holds samples, -1 for a fixed input fed whole),
optional ``shapes`` (input name -> shape, for random inputs of a model with dynamic dims),
optional ``outputs`` (.npz to write the model's outputs on those inputs) and optional
``cpus`` (CPU affinity).
"""

from __future__ import annotations

import functools
import gc
import json
import os
import platform
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np


def _dtype_name(t: Any) -> str:
    s = str(t)
    for name in ("float32", "float16", "int64", "int32", "int8", "uint8", "bool"):
        if name in s:
            return name
    if s == "tensor(float)":
        return "float32"
    return s


class ModelInputs(list):
    """One array per model input, in the model's order, and the axis along which each holds samples.

    ``batch_axes[i]`` is 0 or 1 for an input whose samples lie along that axis, ``None`` for a
    fixed input (a scalar, a recurrent state shared by the batch) that is fed whole to every
    call and never sliced or stacked. A plain list of arrays means every input is batch-first.
    """

    def __init__(self, arrays: Any = (), batch_axes: list[int | None] | None = None) -> None:
        super().__init__(arrays)
        self.batch_axes: list[int | None] = list(batch_axes) if batch_axes is not None else [0] * len(self)
        if len(self.batch_axes) != len(self):
            raise ValueError(f"{len(self)} inputs but {len(self.batch_axes)} batch axes")


def batch_axes_of(xs: list[np.ndarray]) -> list[int | None]:
    """The batch axis of each input: carried by a :class:`ModelInputs`, else 0 (0-d arrays: fixed)."""
    axes = getattr(xs, "batch_axes", None)
    if axes is not None and len(axes) == len(xs):
        return list(axes)
    return [0 if np.ndim(a) > 0 else None for a in xs]


def num_samples(xs: list[np.ndarray]) -> int:
    """Samples in the inputs: the size of the first batched input along its batch axis (1 if none is)."""
    for a, ax in zip(xs, batch_axes_of(xs)):
        if ax is not None:
            return int(np.shape(a)[ax])
    return 1


def take_samples(xs: list[np.ndarray], idx: Any) -> ModelInputs:
    """Samples ``idx`` (a slice or an index array) of every batched input; fixed inputs whole."""
    axes = batch_axes_of(xs)
    out = []
    for a, ax in zip(xs, axes):
        if ax is None:
            out.append(a)
        elif isinstance(idx, slice):
            out.append(a[(slice(None),) * ax + (idx,)])
        else:
            out.append(np.take(a, np.asarray(idx), axis=ax))
    return ModelInputs(out, axes)


def concat_samples(parts: list[list[np.ndarray]], axes: list[int | None]) -> ModelInputs:
    """Inputs of several batches joined along their batch axes (fixed inputs: the first batch's)."""
    return ModelInputs([parts[0][i] if ax is None else np.concatenate([p[i] for p in parts], axis=ax)
                        for i, ax in enumerate(axes)], axes)


def batch_tied(xs: list[np.ndarray]) -> bool:
    """Whether a fixed input carries a batch of one, so the model can only run one sample at a time.

    The rule: a fixed input (batch axis ``None``) with an axis of size 1, e.g. a recurrent state
    ``[layers, 1, hidden]`` shared by the batch, ties the model to batch 1. A scalar (``[]``)
    or a fixed vector without a size-1 axis does not.
    """
    return any(ax is None and 1 in np.shape(a) for a, ax in zip(xs, batch_axes_of(xs)))


def run_in_fixed_batches(run_one: Any, xs: list[np.ndarray], batch: int | None) -> list[np.ndarray]:
    """Run a model whose batch size is fixed on inputs of any batch size.

    Inputs are fed in slices of the fixed size along each input's batch axis (fixed inputs
    whole, see :func:`batch_tied`); the last slice is padded by repeating its last sample and
    the padding is dropped from the outputs, which are batch-first and joined on axis 0.
    """
    n = num_samples(xs)
    if batch_tied(xs):
        batch = 1
    if batch is None or batch <= 0 or n == batch:
        return run_one(xs)
    parts = []
    for i, chunk in enumerate(fixed_batch_chunks(xs, batch)):
        m = min(batch, n - i * batch)
        parts.append([o[:m] if np.ndim(o) else o for o in run_one(chunk)])
    return [np.concatenate([p[k] for p in parts]) if np.ndim(parts[0][k]) else parts[0][k]
            for k in range(len(parts[0]))]


def fixed_batch_chunks(xs: list[np.ndarray], batch: int) -> list[ModelInputs]:
    """``xs`` cut into slices of a model's fixed batch, the last padded by repeating its last sample."""
    n = num_samples(xs)
    axes = batch_axes_of(xs)
    chunks = []
    for i in range(0, n, batch):
        chunk = take_samples(xs, slice(i, i + batch))
        m = num_samples(chunk)
        if m < batch:
            chunk = ModelInputs([c if ax is None else np.concatenate([c, np.take(c, [-1] * (batch - m), axis=ax)], axis=ax)
                                 for c, ax in zip(chunk, axes)], axes)
        chunks.append(chunk)
    return chunks


def feed_dicts(xs: list[np.ndarray], names: list[str], batch: int | None, n: int, step: int = 8) -> list[dict[str, np.ndarray]]:
    """Input dicts of the first ``n`` samples, in batches a model accepts (e.g. for calibration).

    Slices run along each input's batch axis; fixed inputs are in every dict whole. A model
    with a fixed ``batch`` gets slices of that size (the last padded); a batch-tied one
    (see :func:`batch_tied`) one sample per dict.
    """
    if batch_tied(xs):
        batch = 1
    xs = take_samples(xs, slice(0, min(n, num_samples(xs))))
    size = batch or step
    total = num_samples(xs)
    chunks = fixed_batch_chunks(xs, size) if batch else [take_samples(xs, slice(i, i + size)) for i in range(0, total, size)]
    return [dict(zip(names, c)) for c in chunks]


def _fixed_batch(declared: list[dict[str, Any]], xs: list[np.ndarray]) -> int | None:
    """The batch a model fixes: the size of the first batched input's batch axis in the model (None: free)."""
    if batch_tied(xs):
        return 1
    for spec, ax in zip(declared, batch_axes_of(xs)):
        if ax is not None:
            shape = spec["shape"]
            return int(shape[ax]) if ax < len(shape) and shape[ax] > 0 else None
    return None


class OrtSession:
    """onnxruntime session behind the common interface."""

    runtime = "onnxruntime"

    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self.inputs = [
            {"name": i.name, "shape": [d if isinstance(d, int) else -1 for d in i.shape], "dtype": _dtype_name(i.type)}
            for i in self._sess.get_inputs()
        ]
        self.outputs = [
            {"name": o.name, "shape": [d if isinstance(d, int) else -1 for d in o.shape], "dtype": _dtype_name(o.type)}
            for o in self._sess.get_outputs()
        ]
        self._names = [i["name"] for i in self.inputs]

    def _run_one(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return self._sess.run(None, dict(zip(self._names, xs)))

    def run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return run_in_fixed_batches(self._run_one, xs, _fixed_batch(self.inputs, xs))

    def prepared(self, xs: list[np.ndarray]) -> Any:
        """A zero-argument call that runs the model on ``xs``, with nothing else in the loop.

        The feed dict is built once, so the timed loop measures ``InferenceSession.run``
        and not Python bookkeeping around it.
        """
        n = num_samples(xs)
        batch = _fixed_batch(self.inputs, xs)
        if batch is None or n == batch:
            feed = dict(zip(self._names, xs))
            return functools.partial(self._sess.run, None, feed)
        # A fixed-batch model given more samples: slices prepared once, one run per slice.
        feeds = [dict(zip(self._names, chunk)) for chunk in fixed_batch_chunks(xs, batch)]
        run = self._sess.run

        def call() -> list[list[np.ndarray]]:
            return [run(None, feed) for feed in feeds]

        return call


def _tflite_interpreter_class() -> tuple[Any, str, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter  # the maintained runtime

        import ai_edge_litert

        return Interpreter, "ai-edge-litert", getattr(ai_edge_litert, "__version__", "?")
    except ImportError:
        pass
    from tflite_runtime.interpreter import Interpreter  # old boards only; guarded by parity checks

    import tflite_runtime

    return Interpreter, "tflite_runtime", getattr(tflite_runtime, "__version__", "?")


class TfliteSession:
    """LiteRT (or tflite_runtime) interpreter behind the common interface.

    XNNPACK is on (the interpreter's default delegate); ``threads`` is honoured.
    """

    def __init__(self, path: str, threads: int) -> None:
        cls, self.runtime, self.version = _tflite_interpreter_class()
        self._it = cls(model_path=path, num_threads=threads)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        self.inputs = [self._spec(d) for d in self._in]
        self.outputs = [self._spec(d) for d in self._out]

    @staticmethod
    def _spec(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d.get("quantization", (0.0, 0))
        return {
            "name": d["name"],
            "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None,
        }

    def _quantize(self, x: np.ndarray, d: dict[str, Any]) -> np.ndarray:
        dtype = np.dtype(d["dtype"])
        if dtype.kind in "iu" and x.dtype.kind == "f":
            scale, zero = d["quantization"]
            info = np.iinfo(dtype)
            return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
        return x.astype(dtype, copy=False)

    def _dequantize(self, y: np.ndarray, d: dict[str, Any]) -> np.ndarray:
        if y.dtype.kind in "iu" and d["quantization"][0]:
            scale, zero = d["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y

    def _run_one(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        for x, d in zip(xs, self._in):
            self._it.set_tensor(d["index"], self._quantize(x, d))
        self._it.invoke()
        return [self._dequantize(self._it.get_tensor(d["index"]), d) for d in self._out]

    def run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Run any batch size: the model's fixed batch is fed slice by slice.

        Integer-quantized inputs are quantized and outputs dequantized with the model's
        own parameters, so callers always see float values.
        """
        return run_in_fixed_batches(self._run_one, xs, _fixed_batch(self.inputs, xs))

    def prepared(self, xs: list[np.ndarray]) -> Any:
        """A zero-argument call for the timed loop: copy the inputs in, invoke, read outputs.

        Inputs are quantized once beforehand (an app hands the interpreter ready tensors);
        the copy in and out stays in the loop because every real inference pays it.
        """
        batch = _fixed_batch(self.inputs, xs)
        chunks = fixed_batch_chunks(xs, batch) if batch is not None and num_samples(xs) != batch else [xs]
        ready = [[(d["index"], self._quantize(x, d)) for x, d in zip(chunk, self._in)] for chunk in chunks]
        outs = [d["index"] for d in self._out]
        it = self._it

        def call() -> list[list[np.ndarray]]:
            results = []
            for tensors in ready:
                for index, x in tensors:
                    it.set_tensor(index, x)
                it.invoke()
                results.append([it.get_tensor(i) for i in outs])
            return results

        return call


def open_session(path: str, threads: int = 1) -> Any:
    """Open a model file with the runtime its extension calls for."""
    if path.endswith(".tflite"):
        return TfliteSession(path, threads)
    return OrtSession(path, threads)


def _inputs_for(session: Any, batch: int, seed: int = 0, shapes: dict[str, list[int]] | None = None) -> ModelInputs:
    """Random inputs of ``batch`` samples in the model's own shapes.

    Axis 0 is the batch of every input with axes (a 0-d input is fixed). A dynamic dimension
    other than the batch takes its size from ``shapes`` (input name -> full shape, batch
    included); without one it is an error, never a guessed size.
    """
    rng = np.random.default_rng(seed)
    xs, axes = [], []
    for spec in session.inputs:
        declared = list((shapes or {}).get(spec["name"], spec["shape"]))
        unknown = [i for i, s in enumerate(declared) if i > 0 and s <= 0]
        if unknown:
            raise ValueError(f"input {spec['name']!r} has dynamic dimension(s) {unknown} in shape {spec['shape']}: "
                             "give its shape (compress bench --shape NAME=1x3x224x224) or data")
        shape = [batch if i == 0 else s for i, s in enumerate(declared)]
        axes.append(0 if shape else None)
        if spec["dtype"] == "bool":
            xs.append(rng.random(shape) < 0.5)
        elif spec["dtype"].startswith(("int", "uint")) and not spec.get("quantization"):
            xs.append(rng.integers(0, 100, size=shape).astype(spec["dtype"]))
        else:
            xs.append(rng.standard_normal(shape).astype(np.float32))
    return ModelInputs(xs, axes)


def _load_inputs(path: str, rows: int | None = None) -> ModelInputs:
    """Arrays x0, x1, ... of an .npz (and their ``batch_axes``, -1 for fixed), cut or repeated to ``rows`` samples."""
    with np.load(path) as z:
        keys = sorted((k for k in z.files if k.startswith("x") and k[1:].isdigit()), key=lambda k: int(k[1:]))
        data = [z[k] for k in keys]
        axes = [None if int(a) < 0 else int(a) for a in z["batch_axes"]] if "batch_axes" in z.files else None
    xs = ModelInputs(data, axes if axes is not None else batch_axes_of(data))
    if rows is None:
        return xs
    # Fewer real samples than the batch asks for: repeat them rather than time a smaller batch.
    n = num_samples(xs)
    return take_samples(xs, np.arange(rows) % n) if n else xs


def save_inputs(path: Any, xs: list[np.ndarray]) -> None:
    """Write inputs for the agent: x0, x1, ... and ``batch_axes`` (-1: fixed)."""
    axes = [-1 if ax is None else ax for ax in batch_axes_of(xs)]
    np.savez(path, batch_axes=np.asarray(axes, dtype=np.int64), **{f"x{i}": a for i, a in enumerate(xs)})


def per_request(specs: list[dict[str, Any]], arrays: list[np.ndarray], axes: list[int | None]) -> list[dict[str, Any]]:
    """The declared specs with ``request_shape``: the real shape of one request (batch axis at 1)."""
    out = []
    for spec, a, ax in zip(specs, arrays, axes):
        shape = [int(d) for d in np.shape(a)]
        if ax is not None and ax < len(shape):
            shape[ax] = 1
        out.append(dict(spec, request_shape=shape, batch_axis=ax))
    return out


def device_facts() -> dict[str, Any]:
    """What the machine is: uname, CPU model and flags that matter, cores, load."""
    facts: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    try:
        facts["affinity"] = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        facts["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
        model = ""
        flags: set[str] = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and not model:
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
        facts["cpu"] = model or platform.processor()
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve")
        facts["cpu_flags"] = [f for f in wanted if f in flags]
    except OSError:
        facts["cpu"] = platform.processor()
    return facts


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS now, VmHWM the peak since exec)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_rss_kb() -> int:
    # VmHWM is per address space and starts afresh at exec; ru_maxrss would carry the
    # parent's peak across fork+exec.
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _import_runtime(path: str) -> None:
    """Import the runtime before the memory baseline, so the figure is the model's."""
    try:
        if path.endswith(".tflite"):
            _tflite_interpreter_class()
        else:
            import onnxruntime  # noqa: F401
    except ImportError:
        pass


def _involuntary_switches() -> int:
    try:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw)
    except (AttributeError, OSError):
        return 0


def _load1() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def warm_up(call: Any, min_runs: int, max_runs: int, window: int = 10, tolerance: float = 0.05) -> tuple[int, bool]:
    """Run ``call`` until the median of a window of runs stops moving.

    Stable means two consecutive windows' medians within ``tolerance`` of each other,
    after at least ``min_runs`` runs; at most ``max_runs`` runs (then not stable).

    Returns:
        (runs done, whether it settled).
    """
    prev, done = None, 0
    while done < max(max_runs, min_runs):
        ts = []
        for _ in range(window):
            a = time.perf_counter_ns()
            call()
            ts.append(time.perf_counter_ns() - a)
        done += window
        med = float(np.median(ts))
        if done >= min_runs and prev is not None and abs(med - prev) <= tolerance * prev:
            return done, True
        prev = med
    return done, False


def _time_into(call: Any, times: np.ndarray, start: int, stop: int) -> None:
    """Time calls ``start`` to ``stop`` of ``call`` into ``times`` (ns), nothing else in the loop."""
    clock = time.perf_counter_ns
    if isinstance(call, functools.partial) and len(call.args) == 2 and not call.keywords:
        # ``session.run(None, feed)`` called as a bare loop would: on a model of a few
        # microseconds the partial's own dispatch is a measurable share.
        fn, first, second = call.func, call.args[0], call.args[1]
        for i in range(start, stop):
            a = clock()
            fn(first, second)
            times[i] = clock() - a
    else:
        for i in range(start, stop):
            a = clock()
            call()
            times[i] = clock() - a


def time_runs(call: Any, runs: int) -> np.ndarray:
    """Per-run wall times in ns of ``runs`` back-to-back calls, garbage collector paused."""
    times = np.empty(runs, dtype=np.int64)
    gc_was_on = gc.isenabled()
    # A collection in the middle of the loop would be charged to one unlucky run.
    gc.disable()
    try:
        _time_into(call, times, 0, runs)
    finally:
        if gc_was_on:
            gc.enable()
    return times


def _block_size(call: Any, target_s: float = 2e-3, most: int = 10) -> int:
    """Artifact runs per yardstick block: about ``target_s`` of work, 1 to ``most`` runs."""
    a = time.perf_counter()
    call()
    once = time.perf_counter() - a
    return max(1, min(most, int(target_s / once) if once > 0 else most))


def time_blocks(call: Any, runs: int, yard: Any, block: int, yard_runs: int = 10,
                rewarm: int = 2) -> tuple[np.ndarray, list[float], list[float]]:
    """Per-run wall times in ns of ``runs`` calls, timed in blocks of ``block`` runs, each block
    followed by ``yard_runs`` timed calls of the yardstick (see :mod:`bench.yardstick`).

    The artifact's runs are timed exactly as :func:`time_runs` times them; the yardstick runs
    between blocks, outside every artifact run's timing, and ``rewarm`` untimed calls of the
    artifact follow it before the next block.

    Returns:
        (per-run times of ``call`` in ns, each block's median in ms, the yardstick's median
        after each block in ms).
    """
    times = np.empty(runs, dtype=np.int64)
    ytimes = np.empty(yard_runs, dtype=np.int64)
    model_ms: list[float] = []
    yard_ms: list[float] = []
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for start in range(0, runs, max(1, block)):
            stop = min(runs, start + max(1, block))
            if start:
                # The yardstick has just had the caches: give them back before timing again
                # (without this the first run of each block paid for it, +1.4-2% on the medians).
                for _ in range(rewarm):
                    call()
            _time_into(call, times, start, stop)
            _time_into(yard, ytimes, 0, yard_runs)
            model_ms.append(float(np.median(times[start:stop])) / 1e6)
            yard_ms.append(float(np.median(ytimes)) / 1e6)
    finally:
        if gc_was_on:
            gc.enable()
    return times, model_ms, yard_ms


def _yardstick(path: str) -> Any:
    """A zero-argument call of the yardstick model (one thread), or None without onnxruntime."""
    try:
        session = OrtSession(path, 1)
    except Exception:  # no onnxruntime on this board, or an unreadable file: no yardstick
        return None
    feed = [np.zeros([d if d > 0 else 1 for d in session.inputs[0]["shape"]], dtype=np.float32)]
    call = session.prepared(feed)
    for _ in range(50):
        call()
    return call


def benchmark(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark a spec describes; return the result mapping.

    Timing starts only after warmup has settled; load time covers opening the model and
    its first inference; memory is the peak resident set (VmHWM) above the resident set
    before the model was opened, as the OS counts it.
    """
    if spec.get("cpus"):
        os.sched_setaffinity(0, set(spec["cpus"]))
    threads = int(spec.get("threads", 1))
    batch = int(spec.get("batch", 1))
    load_before = _load1()
    _import_runtime(spec["model"])
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    session = open_session(spec["model"], threads)
    xs = _load_inputs(spec["inputs"], batch) if spec.get("inputs") else _inputs_for(session, batch,
                                                                                        shapes=spec.get("shapes"))
    first = session.run(xs)
    load_ms = (time.perf_counter() - t0) * 1e3
    axes = batch_axes_of(xs)
    out_axes: list[int | None] = [0 if np.ndim(o) else None for o in first]
    result: dict[str, Any] = {"ok": True, "runtime": session.runtime, "runtime_version": session.version,
                              "inputs": per_request(session.inputs, xs, axes),
                              "outputs": per_request(session.outputs, first, out_axes), "load_ms": load_ms,
                              "threads": threads, "batch": num_samples(xs),
                              "input_source": "data" if spec.get("inputs") else "random"}
    if spec.get("inputs") and spec.get("outputs"):
        outs = session.run(_load_inputs(spec["inputs"]))
        np.savez(spec["outputs"], **{f"y{i}": o for i, o in enumerate(outs)})
    call = session.prepared(xs)
    done, stable = warm_up(call, int(spec.get("warmup", 20)), int(spec.get("max_warmup", 500)))
    result["warmup_runs"], result["warmup_stable"] = done, stable
    runs = int(spec.get("runs", 100))
    yard = _yardstick(spec["yardstick"]) if spec.get("yardstick") else None
    block = _block_size(call) if yard is not None else 0
    switches0, cpu0, wall0 = _involuntary_switches(), time.process_time(), time.perf_counter()
    if yard is not None:
        times, model_ms, yard_ms = time_blocks(call, runs, yard, block)
        result["yardstick"] = {"version": spec.get("yardstick_version"), "block_runs": block,
                               "model_ms": model_ms, "yardstick_ms": yard_ms}
    else:
        times = time_runs(call, runs)
    wall = time.perf_counter() - wall0
    result["times_ms"] = (times / 1e6).tolist()
    # Facts for the noise flag: was the process pushed off its core while it was timed?
    result["involuntary_switches"] = _involuntary_switches() - switches0
    result["cpu_wall_ratio"] = (time.process_time() - cpu0) / wall if wall > 0 else None
    peak_kb = _peak_rss_kb()
    result["rss_before_kb"] = rss0
    result["peak_rss_kb"] = int(peak_kb)
    result["memory_increase_kb"] = max(0, int(peak_kb) - rss0)
    result["loadavg_before"] = load_before
    result["device"] = device_facts()
    return result


def resident_file_pages() -> list[tuple[int, int]]:
    """This process's resident pages of readable file mappings (libraries, modules), as
    ``(address, pages)`` runs, from ``/proc/self/maps`` and ``/proc/self/pagemap``.

    fork copies the page table entries of anonymous memory but not of file mappings, so a
    forked child would fault these pages in again while it runs, and count them as the
    model's memory; touching them first (:func:`touch_pages`) gives the child the resident
    set a process of its own has at the same point. Empty where the files are unreadable.
    """
    size = os.sysconf("SC_PAGE_SIZE")
    runs: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps, open("/proc/self/pagemap", "rb") as pagemap:
            for line in maps.read().splitlines():
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or not parts[5].startswith("/") or not parts[1].startswith("r"):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                pagemap.seek(lo // size * 8)
                present = (np.frombuffer(pagemap.read((hi - lo) // size * 8), dtype="<u8") >> np.uint64(63)) == 1
                edges = np.flatnonzero(np.diff(np.concatenate([[0], present.astype(np.int8), [0]])))
                runs += [(lo + int(a) * size, int(b - a)) for a, b in zip(edges[::2], edges[1::2])]
    except (OSError, ValueError):
        return []
    return runs


def touch_pages(runs: list[tuple[int, int]]) -> None:
    """Read one byte of each page of ``runs`` (mapping it into this process)."""
    import ctypes

    size = os.sysconf("SC_PAGE_SIZE")
    for start, pages in runs:
        for i in range(pages):
            ctypes.string_at(start + i * size, 1)


_LAYOUT_SHIFT: list[Any] = []


def shift_layout() -> None:
    """Shift where this process's next mappings and heap blocks land, by a random amount.

    A forked child inherits its server's address layout, so every child would place the
    model's buffers at the same addresses, where exec'd processes get a fresh random layout
    (ASLR) each: a random reservation of 0-255 untouched pages moves the next mappings and a
    random heap block of 0-64 KiB the next small allocations, so the children still sample
    the process-to-process spread a benchmark's repeats are for.
    """
    import mmap

    pages = int.from_bytes(os.urandom(1), "little")
    if pages:
        _LAYOUT_SHIFT.append(mmap.mmap(-1, pages * os.sysconf("SC_PAGE_SIZE")))
    _LAYOUT_SHIFT.append(bytearray(int.from_bytes(os.urandom(2), "little")))


def _forked_child(spec_path: str, out_path: str, resident: list[tuple[int, int]]) -> None:
    """In the process :func:`serve` forked: run one benchmark, its output into ``out_path``; never returns."""
    code = 70
    try:
        touch_pages(resident)
        shift_layout()
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        try:
            with open(spec_path, encoding="utf-8") as f:
                os.environ["OMP_NUM_THREADS"] = str(int(json.load(f).get("threads", 1)))
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # main() reports an unreadable spec as JSON
        code = main(["agent", spec_path])
    except BaseException:  # noqa: BLE001 - whatever happens, this process must not return into the server loop
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> int:
    """Fork server: one fresh process per benchmark without paying for Python's start each time.

    Started once with ``--serve`` (numpy imported, no runtime and no model: the runtime is
    imported in the child, before its memory baseline, as in a process of its own), it
    prints ``EDGEPACK-READY <resident library pages>``, then reads one JSON request per line (``spec``: a spec file,
    ``out``: the file for the child's output), forks a child that runs :func:`main` on the
    spec with its output in ``out``, waits for it and prints ``EDGEPACK-DONE <exit code>``
    (negative: killed by that signal). Each benchmark is still a new process with its own
    session, allocator, counters (involuntary switches, VmHWM) and CPU affinity; only the
    interpreter's start and numpy's import (about 0.25 s on a 2-core EPYC) are shared. The
    child first maps the library pages the server has resident (:func:`resident_file_pages`),
    so its memory figures are those of a process of its own, and shifts its layout at random
    (:func:`shift_layout`) as exec's ASLR would. The server never runs a model,
    and runs one child at a time. It ends at end of input.
    """
    import ctypes  # noqa: F401 - imported before the resident pages are listed, as the child uses it

    resident = resident_file_pages()
    # without the resident pages (pagemap unreadable) the children's memory figures would be off:
    # the caller then runs the agent by exec instead
    sys.stdout.write(f"EDGEPACK-READY {sum(n for _, n in resident)}\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            spec_path, out_path = str(req["spec"]), str(req["out"])
        except (ValueError, KeyError, TypeError) as e:
            sys.stdout.write(f"EDGEPACK-BAD {type(e).__name__}\n")
            sys.stdout.flush()
            continue
        pid = os.fork()
        if pid == 0:
            _forked_child(spec_path, out_path, resident)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"EDGEPACK-DONE {os.waitstatus_to_exitcode(status)}\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--serve":
        return serve()
    try:
        with open(argv[1], encoding="utf-8") as f:
            spec = json.load(f)
        out = benchmark(spec)
    except Exception as e:  # reported as JSON: the caller trusts the JSON, not the exit code
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=5)}
    sys.stdout.write("\nEDGEPACK-RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
