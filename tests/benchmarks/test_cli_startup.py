"""``compress --help`` starts at once: under 0.5 s on a quiet 2-core machine.

Measured side by side in one run, interleaved (bare, help, version, bare, help, ...), each a
fresh process as a user's shell starts it: a bare ``python -c pass`` (the floor no CLI can go
under), ``compress --help`` and ``compress --version`` (the installed console script when it
is there, else ``python -m compress``). Printed: the medians of wall time and of CPU time
(user + system of the child, which other work on the machine inflates less), and the ratio to
bare Python. The claim is on the median wall time of ``--help``.

Run: ``python -m pytest tests/benchmarks/test_cli_startup.py --benchmark-only -s``
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

LIMIT_S = 0.5
ROUNDS = 21


def _command() -> list[str]:
    """The console script beside this Python (what ``compress`` runs), else ``python -m compress``."""
    script = Path(sys.executable).parent / "compress"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "compress"]


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(args, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup_times(rounds: int, pycache: Path) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each contender over ``rounds`` interleaved rounds.

    Bytecode is cached (in ``pycache``) as on a user's machine, even where the environment
    says not to write it (``PYTHONDONTWRITEBYTECODE``): compiling the sources on every start
    is not what a user's ``compress`` pays.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=str(pycache))  # this checkout, whatever pip points at
    contenders = {"bare python": [sys.executable, "-c", "pass"], "compress --help": [*_command(), "--help"],
                  "compress --version": [*_command(), "--version"]}
    for args in contenders.values():  # warm the file cache and the bytecode once
        _timed(args, env)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, args in contenders.items():
            samples[name].append(_timed(args, env))
    return {k: {"wall": statistics.median(w for w, _ in v), "cpu": statistics.median(c for _, c in v)}
            for k, v in samples.items()}


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
def test_help_starts_under_half_a_second(benchmark: object, tmp_path: Path) -> None:
    t = benchmark.pedantic(startup_times, args=(ROUNDS, tmp_path), rounds=1, iterations=1)  # type: ignore[attr-defined]
    bare = t["bare python"]
    print(f"\n{ROUNDS} interleaved rounds of fresh processes ({' '.join(_command())}); load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name, v in t.items():
        print(f"  {name:20s} wall {v['wall'] * 1e3:6.0f} ms ({v['wall'] / bare['wall']:.2f}x bare), "
              f"cpu {v['cpu'] * 1e3:6.0f} ms ({v['cpu'] / bare['cpu']:.2f}x bare)")
    benchmark.extra_info.update({k.replace(" ", "_"): v for k, v in t.items()})  # type: ignore[attr-defined]
    assert t["compress --help"]["wall"] < LIMIT_S, t
