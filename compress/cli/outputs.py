"""Checks on where a command will write, made before any work starts.

A path the user gives for an output (a run folder, a report, a bundle) that cannot be
written is a wrong input: it is reported at once (exit 2), not after a long run.
"""

from __future__ import annotations

import os
from pathlib import Path

from compress.core.errors import InputFileError


def _writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` (and its parents) or say why it cannot be."""
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise InputFileError(f"{what}: {p} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputFileError(f"{what}: cannot create the folder {folder} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        if read_only:
            raise InputFileError(f"{what}: {folder} is on a read-only file system")
        raise InputFileError(f"{what}: no permission to write in {folder}")


def check_output_dir(folder: Path, what: str) -> None:
    """Make sure ``folder`` exists (creating it) and can be written.

    Args:
        folder: The output folder.
        what: How the user named it, e.g. ``--out``, for the message.

    Raises:
        InputFileError: when it is a file, or cannot be created or written.
    """
    _writable_folder(folder, f"{what} {folder}")


def check_output_file(dest: Path, what: str) -> None:
    """Make sure a file can be written at ``dest`` (its folder is created if missing).

    Raises:
        InputFileError: when ``dest`` is a folder, or its folder cannot be created or written.
    """
    if dest.is_dir():
        raise InputFileError(f"{what} {dest}: is a folder; give a file name")
    _writable_folder(dest.parent, f"{what} {dest}")
