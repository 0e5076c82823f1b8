"""The command's own exit: what Python's exit does that matters is still done, then the process ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROGRAM = textwrap.dedent('''
    import atexit, sys, threading, time
    from pathlib import Path
    from compress.cli.root import exit_now

    out = Path(sys.argv[1])
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    def late():
        time.sleep(0.3)
        (out / "thread").write_text("done")
    threading.Thread(target=late).start()  # not a daemon: waited for
    sys.stdout.write("x" * 200_000)  # buffered (a pipe): flushed before the end
    exit_now(eval(sys.argv[2]))
''')


@pytest.mark.parametrize("code, rc", [("0", 0), ("None", 0), ("3", 3), ("'a message'", 1)])
def test_exit_keeps_output_handlers_threads_and_the_code(tmp_path: Path, code: str, rc: int) -> None:
    res = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path), code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.returncode == rc, res.stderr
    assert len(res.stdout) == 200_000
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"
    assert ("a message" in res.stderr) == (rc == 1)


def test_the_usual_exit_on_request(tmp_path: Path) -> None:
    import os

    res = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path), "4"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, env=dict(os.environ, EDGEPACK_FAST_EXIT="0"))
    assert res.returncode == 4 and (tmp_path / "atexit").is_file() and (tmp_path / "thread").is_file()
