"""What a board sends back is not trusted: checked, bounded and cleaned before it is used.

A board (SSH or adb) runs code edgepack does not control: its Python, its runtime, the
user's benchmark binary, or someone else's hands. Everything it returns goes through here:

- :func:`clean_text` strips terminal escape sequences, control characters and bidi
  overrides from text that is printed or kept in a message or report, and bounds its length;
- :func:`parse_agent_line` / :func:`validate_agent_result` check the agent's JSON against its
  schema (times finite and positive, counts that are integers, sizes bounded) and keep only
  the fields edgepack knows;
- :func:`load_outputs` reads the outputs file as plain numeric arrays (no pickles, bounded
  size, no object arrays).

Every failure is a :class:`~compress.core.errors.TargetError` that names the board.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import TargetError

MAX_RESULT_CHARS = 64 * 2**20  # the agent's JSON line (a million runs' times is ~20 MB)
MAX_RUNS = 2_000_000
MAX_TIME_MS = 3_600_000.0  # one run over an hour is a broken clock, not a model
MAX_OUTPUTS_BYTES = 512 * 2**20  # outputs of PARITY_SAMPLES inputs, uncompressed
MAX_OUTPUT_ARRAYS = 4096
MAX_TEXT = 2000

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC strings, two-character escapes,
# then C0 (but tab and newline), DEL, C1 controls, and bidi overrides that reorder what is shown.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|$)"
    r"|\x1b[ -/]*[0-~]"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]",
    re.DOTALL,
)


def clean_text(text: Any, limit: int = MAX_TEXT) -> str:
    """Text from a board made safe to print and store.

    Args:
        text: What the board sent (bytes are decoded as UTF-8 with replacement).
        limit: Characters kept; a longer text ends with how many were cut.

    Returns:
        The text without escape sequences or control characters (tabs and newlines stay).
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _ESCAPES.sub("", str(text).replace("\r\n", "\n").replace("\r", "\n"))
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    return text


def one_line(text: Any, limit: int = 300) -> str:
    """:func:`clean_text` on one line (newlines become `` | ``)."""
    return clean_text(" | ".join(s.strip() for s in clean_text(text, limit * 4).splitlines() if s.strip()), limit)


# ---------------------------------------------------------------------------- the agent's JSON


def _constant(name: str) -> float:
    return float(name)  # NaN / Infinity are read, then refused field by field with a clear reason


def parse_agent_line(payload: str, target: str) -> Any:
    """The JSON of one ``EDGEPACK-RESULT`` line, or a TargetError saying it is broken."""
    if len(payload) > MAX_RESULT_CHARS:
        raise TargetError(target, f"the benchmark agent's result is {len(payload)} characters long "
                                  f"(more than {MAX_RESULT_CHARS}): refused")
    try:
        return json.loads(payload, parse_constant=_constant)
    except (ValueError, RecursionError) as e:
        raise TargetError(target, f"the benchmark agent's result is not valid JSON ({one_line(e, 120)}): "
                                  f"{one_line(payload, 200)}") from None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number(out: dict[str, Any], src: dict[str, Any], key: str, target: str, *, low: float = 0.0,
            high: float = 2.0**53, integer: bool = False) -> None:
    """Copy a number that must lie in [low, high] (None stays None)."""
    v = src.get(key)
    if v is None:
        return
    if not _is_number(v) or (integer and isinstance(v, float) and not v.is_integer()):
        raise TargetError(target, f"the board's {key} is not {'an integer' if integer else 'a number'}: "
                                  f"{one_line(repr(v), 80)}")
    if not math.isfinite(v) or not low <= v <= high:
        raise TargetError(target, f"the board's {key} is out of range ({v!r}; expected {low:g} to {high:g})")
    out[key] = int(v) if integer else float(v)


def _text(out: dict[str, Any], src: dict[str, Any], key: str, limit: int = 200) -> None:
    v = src.get(key)
    if v is not None:
        out[key] = one_line(v if isinstance(v, str) else repr(v), limit)


def clean_json(value: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """A JSON value with every string cleaned, non-finite numbers as None, bounded depth and size."""
    budget = budget if budget is not None else [20_000]
    budget[0] -= 1
    if depth > 8 or budget[0] < 0:
        return None
    if isinstance(value, str):
        return clean_text(value, 300)
    if isinstance(value, bool) or value is None:
        return value
    if _is_number(value):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [clean_json(v, depth + 1, budget) for v in value[:1000]]
    if isinstance(value, dict):
        return {clean_text(k, 100): clean_json(v, depth + 1, budget) for k, v in list(value.items())[:200]}
    return None


def validate_times(times: Any, target: str, what: str = "times_ms") -> list[float]:
    """Per-run times that are a non-empty list of finite, positive milliseconds."""
    if not isinstance(times, list) or not times:
        raise TargetError(target, f"the board returned no per-run times ({what} is {one_line(repr(times), 60)})")
    if len(times) > MAX_RUNS:
        raise TargetError(target, f"the board returned {len(times)} run times (at most {MAX_RUNS})")
    bad = [t for t in times if not _is_number(t) or not math.isfinite(t) or not 0 < t <= MAX_TIME_MS]
    if bad:
        raise TargetError(target, f"the board returned {len(bad)} impossible run time(s) in {what} (each must be a "
                                  f"finite number of milliseconds above 0 and at most {MAX_TIME_MS:g}), e.g. "
                                  f"{one_line(repr(bad[0]), 40)}: not reported as measured")
    return [float(t) for t in times]


def validate_agent_result(result: Any, target: str) -> dict[str, Any]:
    """The agent's result, checked against its schema and reduced to the fields edgepack reads.

    Raises:
        TargetError: The agent reported a failure, or a field is missing, of the wrong type or
            out of range.
    """
    if not isinstance(result, dict):
        raise TargetError(target, f"the benchmark agent's result is not a JSON object: {one_line(repr(result), 80)}")
    if result.get("ok") is not True:
        raise TargetError(target, f"benchmark agent failed: {one_line(result.get('error'), 600)}")
    out: dict[str, Any] = {"ok": True, "times_ms": validate_times(result.get("times_ms"), target)}
    _number(out, result, "load_ms", target, high=MAX_TIME_MS * 24)
    _number(out, result, "batch", target, low=1, high=2**31, integer=True)
    _number(out, result, "threads", target, low=0, high=2**16, integer=True)
    for key in ("memory_increase_kb", "peak_rss_kb", "rss_before_kb"):
        _number(out, result, key, target, high=2.0**44, integer=True)
    _number(out, result, "involuntary_switches", target, high=2.0**53, integer=True)
    _number(out, result, "warmup_runs", target, high=2.0**53, integer=True)
    _number(out, result, "loadavg_before", target, high=1e6)
    _number(out, result, "cpu_wall_ratio", target, high=1e6)
    if isinstance(result.get("warmup_stable"), bool):
        out["warmup_stable"] = result["warmup_stable"]
    for key in ("runtime", "runtime_version", "input_source"):
        _text(out, result, key)
    for key in ("inputs", "outputs"):
        v = result.get(key)
        if v is not None:
            if not isinstance(v, list) or len(v) > MAX_OUTPUT_ARRAYS:
                raise TargetError(target, f"the board's {key} is not a list of tensor descriptions")
            out[key] = clean_json(v)
    y = result.get("yardstick")
    if y is not None:
        out["yardstick"] = _yardstick(y, target)
    out["device"] = _device(result.get("device"), target)
    return out


def _yardstick(y: Any, target: str) -> dict[str, Any]:
    """The yardstick's block medians beside the artifact's (see :mod:`bench.yardstick`)."""
    if not isinstance(y, dict):
        raise TargetError(target, "the board's yardstick timings are not a JSON object")
    model = validate_times(y.get("model_ms"), target, "yardstick.model_ms")
    yard = validate_times(y.get("yardstick_ms"), target, "yardstick.yardstick_ms")
    if len(model) != len(yard):
        raise TargetError(target, f"the board's yardstick timings do not pair up ({len(model)} artifact blocks, "
                                  f"{len(yard)} yardstick blocks)")
    out: dict[str, Any] = {"model_ms": model, "yardstick_ms": yard}
    _text(out, y, "version")
    _number(out, y, "block_runs", target, low=1, high=2**31, integer=True)
    return out


def _device(dev: Any, target: str) -> dict[str, Any]:
    if dev is None:
        return {}
    if not isinstance(dev, dict):
        raise TargetError(target, "the board's device facts are not a JSON object")
    out: dict[str, Any] = {}
    for key in ("machine", "system", "release", "python", "cpu"):
        _text(out, dev, key)
    _number(out, dev, "cores", target, low=1, high=2**20, integer=True)
    aff = dev.get("affinity")
    if isinstance(aff, list) and all(_is_number(c) and float(c).is_integer() and c >= 0 for c in aff[:4096]):
        out["affinity"] = [int(c) for c in aff[:4096]]
    load = dev.get("loadavg")
    if isinstance(load, list) and all(_is_number(x) and math.isfinite(x) and x >= 0 for x in load[:3]):
        out["loadavg"] = [float(x) for x in load[:3]]
    flags = dev.get("cpu_flags")
    if isinstance(flags, list):
        out["cpu_flags"] = [one_line(f, 40) for f in flags[:64] if isinstance(f, str)]
    return out


# ---------------------------------------------------------------------------- outputs file


def load_outputs(path: Path, target: str, max_bytes: int = MAX_OUTPUTS_BYTES) -> list[np.ndarray]:
    """The arrays ``y0, y1, ...`` of an outputs ``.npz`` a board wrote: numeric, bounded, no pickles.

    Raises:
        TargetError: The file is not a valid ``.npz``, holds an object (pickled) or text array,
            other names, or more data than ``max_bytes``.
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TargetError(target, f"the board's outputs file is {size} bytes (more than {max_bytes}): refused")
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_OUTPUT_ARRAYS:
                raise TargetError(target, f"the board's outputs file holds {len(infos)} arrays: refused")
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise TargetError(target, f"the board's outputs file unpacks to {declared} bytes (more than "
                                          f"{max_bytes}): refused")
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if not names or not all(re.fullmatch(r"y\d{1,4}", n) for n in names):
                raise TargetError(target, "the board's outputs file does not hold the arrays y0, y1, ... the agent "
                                          f"writes (found {one_line(', '.join(names[:10]), 120)})")
            arrays = [npz[n] for n in sorted(names, key=lambda n: int(n[1:]))]
    except TargetError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "object" in str(e).lower():
            raise TargetError(target, "the board's outputs hold an object (pickled) array; only numeric arrays "
                                      "are read") from None
        raise TargetError(target, f"the board's outputs file is not a valid .npz: {one_line(e, 200)}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise TargetError(target, f"the board's outputs file is not a valid .npz: {type(e).__name__}: "
                                  f"{one_line(e, 200)}") from None
    for name, a in zip(sorted(names, key=lambda n: int(n[1:])), arrays):
        if a.dtype.kind not in "biufc":
            raise TargetError(target, f"the board's output {name} is not a numeric array (dtype {a.dtype})")
    return arrays
