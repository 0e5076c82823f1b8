"""The run folder a run owns: its lock, stale scratch files, and the order reports are written in.

One run at a time writes into a folder: :class:`RunFolderLock` takes an exclusive
``flock`` on ``.lock`` in it (holding the pid, for the message a second run gets). The
kernel drops the lock when its holder dies, even by ``kill -9``, so a stale lock never
blocks a rerun. While the lock is held, every ``*.part`` file (a write that never reached
its rename) and every scratch folder a killed step left behind is stale and removed.

Reports are written ``report.md`` and ``report.html`` first and ``report.json`` last, and
a report says ``ok`` only when every file it lists exists: a run killed while writing them
leaves either no ``report.json`` or one that is true.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.core.fileio import atomic_write_text
from compress.core.errors import EdgepackError

LOCK_NAME = ".lock"
REPORT_FILES = ("report.json", "report.md", "report.html")
# Scratch folders steps make with mkdtemp inside their step folder (quantize's ``work-``,
# QAT's ``float-``): removed when the step ends, left behind only by a killed run.
_SCRATCH_DIR = re.compile(r"^(work|float)-[a-z0-9_]{8}$")
# compress.core.fileio.atomic_path's temp files: ``.NAME.`` + mkstemp's 8 characters + ``.part``
_PART = re.compile(r"^\..+\.[a-zA-Z0-9_]{8}\.part$")

# What an OSError while writing into the run folder means, in the user's words.
_WRITE_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large for the file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class RunFolderBusy(EdgepackError):
    """Another run holds the run folder's lock: nothing was written (exit 2, a wrong ``--out``)."""

    exit_code = 2


class RunFolderWriteError(EdgepackError):
    """A file of the run could not be written (disk full, read-only file system): a failed run."""

    exit_code = 1

    def __init__(self, path: Path | str | None, error: OSError) -> None:
        self.path = path
        self.error = error
        what = _WRITE_ERRNOS.get(error.errno or 0, error.strerror or type(error).__name__)
        where = path or error.filename or "the run folder"
        super().__init__(f"cannot write {where}: {what} ({error.strerror or error}); free space or choose another "
                         "--out, then run again")


def write_error_of(exc: BaseException) -> RunFolderWriteError | None:
    """The write failure behind an exception (itself, or its cause or context), if there is one.

    Steps wrap what failed in their own errors (``StepError("export:onnx", ...)``); a full
    disk under them is still a full disk, reported as such.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, RunFolderWriteError):
            return e
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            return RunFolderWriteError(e.filename, e)
        e = e.__cause__ or e.__context__
    return None


class RunFolderLock:
    """An exclusive lock on a run folder, held for the whole run.

    Args:
        folder: The run folder (created if missing).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or say who holds it.

        Raises:
            RunFolderBusy: Another live process holds it.
            RunFolderWriteError: The lock file cannot be created (read-only folder, full disk).
        """
        import fcntl

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RunFolderWriteError(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderWriteError(self.path, e) from e
            who = f"pid {holder}" if holder else "another process (pid not yet written)"
            raise RunFolderBusy(f"the run folder {self.folder} is in use by another run ({who}); wait for it to "
                                "finish or give another --out") from None
        try:  # the pid is for the message a second run gets; the lock is what counts
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would let two later runs lock two files)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLog:
    """``log.txt`` of a run, appended line by line.

    A line that cannot be written (disk full) closes the file, not the run: the next write
    of a model or report fails the run with the same cause; a run that ends anyway says its
    log is incomplete (``error``).

    Args:
        path: The log file.

    Raises:
        RunFolderWriteError: The file cannot be opened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error: RunFolderWriteError | None = None
        try:
            self._file: Any = open(path, "a", encoding="utf-8")  # noqa: SIM115  (open for the whole run)
        except OSError as e:
            raise RunFolderWriteError(path, e) from e

    def write(self, text: str) -> None:
        """Append ``text`` and flush it (a kill -9 loses at most the line being written)."""
        if self._file is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as e:
            self.error = RunFolderWriteError(self.path, e)
            self.close()

    def close(self) -> None:
        """Close the file (errors flushing the last line are the log's, not the run's)."""
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as e:
            self.error = self.error or RunFolderWriteError(self.path, e)
        self._file = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def remove_stale_files(folder: Path) -> list[Path]:
    """Remove what killed runs left in a run folder the caller holds the lock of.

    Only edgepack's own leftovers, where a run writes (an ``--out`` may be a folder that
    holds other files): ``.NAME.XXXXXXXX.part`` files (writes that never reached their
    rename) in the folder itself and anywhere under ``steps/`` and ``exports/``, and the
    scratch folders steps make inside ``steps/*/`` and ``exports/*/``. Symlinks are not
    followed.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []

    def parts_in(here: Path, names: list[str]) -> None:
        for name in names:
            if _PART.match(name) and not (here / name).is_symlink():
                try:
                    (here / name).unlink()
                    removed.append(here / name)
                except OSError:
                    pass

    try:
        parts_in(folder, [e.name for e in os.scandir(folder) if e.is_file(follow_symlinks=False)])
    except OSError:
        return removed
    for sub in ("steps", "exports"):
        top = folder / sub
        if top.is_symlink() or not top.is_dir():
            continue
        for root, dirs, files in os.walk(top, followlinks=False):
            here = Path(root)
            parts_in(here, files)
            if here.parent == top:
                for name in [d for d in dirs if _SCRATCH_DIR.match(d)]:
                    if not (here / name).is_symlink():
                        shutil.rmtree(here / name, ignore_errors=True)
                        removed.append(here / name)
                    dirs.remove(name)
    return removed


def remove_old_reports(folder: Path) -> None:
    """Remove a previous run's reports: until this run writes its own, the folder has none
    (a kill mid-run must not leave an ``ok`` report about files this run is replacing)."""
    for name in REPORT_FILES:
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError as e:
            raise RunFolderWriteError(folder / name, e) from e


def missing_files(folder: Path, report: Any) -> list[str]:
    """Files an about-to-be-written report lists (artifacts, bundle) that do not exist."""
    missing = []
    for art in report.artifacts:
        if art.path and not (folder / art.path).exists():
            missing.append(art.path)
    bundle = getattr(report, "bundle", None) or {}
    path = bundle.get("path") if isinstance(bundle, dict) else None
    if path and not (folder / path).exists():
        missing.append(str(path))
    return missing


def write_reports(folder: Path, report: Any, log: Callable[[str], None]) -> None:
    """Write ``report.md``, ``report.html`` and, last, ``report.json``.

    A report that says ``ok`` or ``degraded`` lists only files that exist; otherwise it says
    ``failed`` and names them. An HTML page that cannot be rendered (a plotting bug) is
    replaced by a plain page and an advisory says so; one that cannot be *written* fails the
    run. When ``report.md`` or ``report.html`` cannot be written, ``report.json`` says so
    (if it can be written) and the write error is raised.

    Args:
        folder: The run folder.
        report: The run's ``bench.report.Report`` (its status may be changed here).
        log: The run's log.

    Raises:
        RunFolderWriteError: A report file could not be written.
    """
    from bench.report import render_markdown
    from compress.core.report_schema import AdvisoryReport

    if report.status in ("ok", "degraded"):
        missing = missing_files(folder, report)
        if missing:
            report.status = "failed"
            report.error = "files the report lists are missing: " + ", ".join(missing[:10])
    pages: dict[str, str] = {}
    try:
        from bench.html import render_html
    except ImportError:
        render_html = None
    if render_html is not None:
        try:
            pages["report.html"] = render_html(report, folder)
        except Exception as e:  # noqa: BLE001  a plotting bug must not lose the run; the report says so
            msg = f"report.html could not be rendered ({type(e).__name__}: {e}); it holds the Markdown report instead"
            log(msg)
            report.advisories.append(AdvisoryReport(code="report_html_failed", message=msg, severity="warning"))
    markdown = render_markdown(report)
    if render_html is not None and "report.html" not in pages:
        pages["report.html"] = _plain_page(markdown)
    for name, text in [("report.md", markdown), *pages.items()]:
        try:
            atomic_write_text(folder / name, text)
        except OSError as e:
            err = RunFolderWriteError(folder / name, e)
            break
    else:
        err = None
    if err is not None:
        report.status, report.error = "failed", str(err)
        try:
            atomic_write_text(folder / "report.json", report.model_dump_json(indent=2))
        except OSError:
            pass
        raise err from err.error
    try:
        atomic_write_text(folder / "report.json", report.model_dump_json(indent=2))
    except OSError as e:
        raise RunFolderWriteError(folder / "report.json", e) from e


def _plain_page(markdown: str) -> str:
    import html

    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>edgepack report</title></head><body>"
            f"<pre>{html.escape(markdown)}</pre></body></html>\n")
