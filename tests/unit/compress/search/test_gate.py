"""The benchmark gate: work shares the machine, a benchmark has it alone, and is not starved."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from compress.search.gate import BenchGate


def _started(fn) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, done


def test_a_benchmark_waits_for_work_and_new_work_waits_for_it(tmp_path: Path) -> None:
    gate = BenchGate(tmp_path)
    work = gate.shared()
    other = gate.shared()  # work shares
    timed = threading.Event()

    def benchmark() -> None:
        with gate.exclusive():
            timed.set()
            time.sleep(0.2)

    _, bench_done = _started(benchmark)
    time.sleep(0.3)
    assert not timed.is_set()  # two trials still train
    def late_work() -> None:
        gate.shared().release()

    _, late_done = _started(late_work)
    time.sleep(0.2)
    assert not late_done.is_set()  # new work queues behind the waiting benchmark (the turnstile)
    work.release()
    other.release()
    assert bench_done.wait(5) and timed.is_set()
    assert late_done.wait(5)


def test_benchmarks_never_overlap(tmp_path: Path) -> None:
    gate = BenchGate(tmp_path)
    inside: list[int] = []
    overlaps: list[int] = []

    def benchmark() -> None:
        with gate.exclusive():
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.05)
            inside.pop()

    threads = [_started(benchmark)[0] for _ in range(4)]
    for t in threads:
        t.join(5)
    assert not overlaps
