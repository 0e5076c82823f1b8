"""The machine yardstick: a fixed reference model timed beside every measured artifact.

A cloud VM or a shared board changes speed under a benchmark's feet: on the 2-core VM this
was built on, the same 14 us model ran at 13.5 us in one process and 22-29 us in the next,
the state lasting 0.1-1 s and coming from outside the machine (no load, no steal time
visible inside). No statistic of one run's own times can tell such a phase from the model,
so two runs minutes apart disagreed by 0.9-2x and a 25% regression could not be seen.

The agent therefore alternates blocks of the artifact's timed runs with blocks of a fixed
reference model (this module's, identical on every machine and run), in the same process, a
fraction of a millisecond apart: what the machine's state does to one it does to the other
(the ratio artifact / yardstick of a 24 us model stayed within 1.22-1.27 in processes whose
raw medians were 23-35 us). ``compress compare`` judges a latency change on that ratio when
both runs carry it (see :mod:`bench.compare`); the report's latencies stay the raw
measured milliseconds.

The yardstick is a small convolutional network (two 3x3 convolutions, pooling, a dense
layer; about 20 us on one x86 core) built from fixed seeded weights with ``onnx.helper``:
its bytes depend only on ``VERSION``; a new version (another graph) makes old and new
reports incomparable on the ratio, and compare then falls back to the raw latencies.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.env import cache_dir

VERSION = "edgepack-yardstick-1"
# Timed calls of the yardstick after each block of the artifact's runs.
RUNS_PER_BLOCK = 10


def model_bytes() -> bytes:
    """The yardstick's ONNX bytes: always the same for one ``VERSION``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(20261202)

    def init(name: str, *shape: int) -> Any:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        w = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return numpy_helper.from_array(w, name)

    inits = [init("w1", 16, 8, 3, 3), init("b1", 16), init("w2", 16, 16, 3, 3), init("b2", 16),
             init("w3", 10, 16), init("b3", 10)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "edgepack_yardstick",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=VERSION)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _file_prefix() -> str:
    """The start of the yardstick file's name: its ``VERSION``, then the digest of its bytes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", VERSION).strip("-") + "-"


def _intact(file: Path) -> bool:
    """Whether a yardstick file holds the bytes its name's digest says (a damaged one does not)."""
    digest = file.name[len(_file_prefix()):-len(".onnx")]
    try:
        return len(digest) == 16 and hashlib.sha256(file.read_bytes()).hexdigest()[:16] == digest
    except OSError:
        return False


def path(folder: Path | None = None) -> Path:
    """The yardstick's ONNX file, written once (atomically) into ``folder``.

    Default folder: ``$EDGEPACK_CACHE`` or ``~/.cache/edgepack``; when that is not writable,
    the system's temporary folder. The file's name carries ``VERSION`` and a digest of its
    bytes: a file of this version whose bytes match its digest is used as it is (every
    benchmark process asks, and building the model means importing onnx, seconds on a
    loaded machine), a stale or damaged file never.
    """
    candidates = [folder] if folder is not None else [cache_dir(), Path(tempfile.gettempdir())]
    for base in candidates:
        try:
            found = sorted(Path(base).glob(f"{_file_prefix()}*.onnx"))
        except OSError:
            continue
        for file in found:
            if _intact(file):
                return file
    data = model_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    last: OSError | None = None
    for base in candidates:
        target = Path(base) / f"{_file_prefix()}{digest}.onnx"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".yardstick-", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return target
        except OSError as e:
            last = e
    raise OSError(f"cannot write the yardstick model: {last}")


def block_ratios(details: dict[str, Any] | None) -> list[np.ndarray] | None:
    """Per process, each block's median artifact time over the yardstick's median time.

    None when the result carries no yardstick (another runtime, an old report, a board
    without onnxruntime).
    """
    y = (details or {}).get("yardstick")
    if not isinstance(y, dict) or not y.get("processes"):
        return None
    groups = []
    for p in y["processes"]:
        m = np.asarray(p.get("model_ms") or [], dtype=np.float64)
        r = np.asarray(p.get("yardstick_ms") or [], dtype=np.float64)
        n = min(m.size, r.size)
        ok = (m[:n] > 0) & (r[:n] > 0)
        if ok.any():
            groups.append(m[:n][ok] / r[:n][ok])
    return groups or None


def version_of(details: dict[str, Any] | None) -> str | None:
    y = (details or {}).get("yardstick")
    return y.get("version") if isinstance(y, dict) else None
