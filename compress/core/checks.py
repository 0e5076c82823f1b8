"""Bounds and file checks shared by the recipe's fields.

Everything a run would only find out late (a seed numpy refuses, a tensor of 2**100
elements, a weights file that cannot be read) is refused here, while the recipe is
validated, as a problem with its dotted path and line.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo

class StrictModel(BaseModel):
    """Base of every recipe mapping: unknown keys are errors, floats are finite (``.inf``, ``.nan`` refused)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


NAME_MAX = 255
"""Longest file or folder name most file systems allow (bytes)."""
MAX_DIM = 2**31 - 1
"""Largest size of one tensor dimension."""
MAX_ELEMENTS = 2**31
"""Most elements of one input tensor (8 GiB of float32): anything larger is a typo, not a model."""
MAX_RANK = 32

Bool = StrictBool
"""``true`` / ``false`` only: the string ``"yes"`` or the number 1 is refused, not taken as true."""
Seed = Annotated[int, Field(ge=0, le=2**31 - 1, description="a seed numpy and torch accept (0 to 2**31 - 1)")]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
Count = Annotated[int, Field(ge=1, le=10_000_000)]
BatchSize = Annotated[int, Field(ge=1, le=65_536)]
Epochs = Annotated[int, Field(ge=0, le=100_000)]
Threads = Annotated[int, Field(ge=1, le=4096)]


def check_elements(shape: list[int], what: str) -> None:
    """Refuse a shape of more than :data:`MAX_ELEMENTS` elements (``-1`` counts as 1)."""
    n = 1
    for d in shape:
        n *= max(d, 1)
    if n > MAX_ELEMENTS:
        raise ValueError(f"{what}: {n:.3g} elements in shape {shape}; at most {MAX_ELEMENTS:,} (2**31) per input")


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", "."))


def _check_files(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("check_files", True))


def check_path_form(value: str | Path, what: str) -> Path:
    """A path with ``~user`` expanded and every component of a length file systems allow.

    Raises:
        ValueError: an unknown ``~user``, or a component over :data:`NAME_MAX` bytes.
    """
    text = str(value)
    if "\x00" in text:
        raise ValueError(f"{what}: a path cannot contain a NUL character")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory"
        user = text[1:].split("/", 1)[0] or "the current user"
        raise ValueError(f"{what}: {_short(text)}: no home folder for {user!r} (is the ~user spelt right?)") from None
    for part in path.parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise ValueError(f"{what}: a path component is {size} bytes long ({_short(part, 40)}); "
                             f"file systems allow {NAME_MAX}")
    return path


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} chars)"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def check_readable_file(path: Path, what: str, shown: str) -> None:
    """Refuse what is not a regular file this process can read (a folder, a FIFO, a device, /proc/self/mem).

    Opens the file and reads one byte: a FIFO is refused by its mode before it is opened
    (opening it would block).

    Raises:
        ValueError: missing, not a regular file, or unreadable.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{what} not found: {shown} (looked at {path})") from None
    except OSError as e:
        raise ValueError(f"{what}: cannot look at {shown}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what}: {shown} is {_kind(st.st_mode)}; expected a file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            os.read(fd, 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise ValueError(f"{what}: cannot read {shown}: {e.strerror or e}") from None


def resolve_file(value: str | Path, info: ValidationInfo, what: str) -> Path:
    """Resolve a path against the recipe folder and check that it is a readable regular file."""
    path = check_path_form(value, what)
    shown = _short(str(value))
    try:
        if not path.is_absolute():
            path = (_base_dir(info) / path).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop, an over-long path
        raise ValueError(f"{what}: cannot resolve {shown}: {getattr(e, 'strerror', None) or e}") from None
    if _check_files(info):
        check_readable_file(path, what, shown)
    return path


_REF_RE = re.compile(r"^(?P<mod>[^:]+):(?P<fn>[A-Za-z_][A-Za-z0-9_]*)$")


def resolve_ref(value: str, info: ValidationInfo, what: str) -> str:
    """Check a ``file.py:function`` or ``package.module:function`` reference.

    A file reference is returned with its file made absolute.
    """
    m = _REF_RE.match(value)
    if not m:
        raise ValueError(
            f"{what} must look like 'file.py:function' or 'package.module:function' (got {_short(value)!r})"
        )
    mod = m.group("mod")
    if mod.endswith(".py"):
        path = resolve_file(mod, info, f"{what} file")
        return f"{path}:{m.group('fn')}"
    if not re.match(r"^[A-Za-z_][\w.]*$", mod) or len(mod) > 500:
        raise ValueError(f"{what}: {_short(mod)!r} is neither a .py file nor a module name")
    return value
