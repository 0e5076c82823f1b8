"""Where trials run: a local process pool, or Ray tasks with latency measured by the driver.

Both take :class:`~compress.search.trial.TrialJob` s and hand back outcomes as trials
finish. ``local``: each trial is one process of a pool sized to the machine; its steps hold
the search folder's gate shared and its benchmark holds it alone
(:mod:`compress.search.gate`), so no trial is timed while another trains. ``ray``: a task
runs the trial's steps, exports and evaluations on a worker (the step cache keeps them);
the driver then runs the same recipe where the target is (every step a cache hit) and
measures it there, through the same gate. A benchmark never runs on a busy worker.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from compress.core.errors import MissingDependencyError
from compress.search.trial import TrialJob, remove_scratch, run_trial_job


class Executor(Protocol):
    workers: int

    def submit(self, job: TrialJob) -> None: ...

    def next_done(self) -> tuple[TrialJob, dict[str, Any]]: ...

    def pending(self) -> int: ...

    def close(self) -> None: ...


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LocalExecutor:
    """A process pool (fresh interpreters: no torch state crosses trials); benchmarks gated."""

    def __init__(self, workers: int | None = None) -> None:
        import multiprocessing

        self.workers = workers or max(1, _cores())
        threads = max(1, _cores() // self.workers)  # trials training side by side do not oversubscribe the cores
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_limit_threads, initargs=(threads,))
        self._running: dict[Future, TrialJob] = {}

    def submit(self, job: TrialJob) -> None:
        self._running[self._pool.submit(run_trial_job, job)] = job

    def pending(self) -> int:
        return len(self._running)

    def next_done(self) -> tuple[TrialJob, dict[str, Any]]:
        done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        fut = next(iter(done))
        job = self._running.pop(fut)
        try:
            return job, fut.result()
        except Exception as e:  # the worker process died (killed, out of memory)
            return job, {"number": job.number, "params": job.params, "run_dir": job.run_dir, "status": "failed",
                         "reason": f"the trial's process died: {type(e).__name__}: {e}"}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _limit_threads(threads: int) -> None:
    """A pool process's training threads (before torch is imported; a value the user set is kept).

    Benchmarks are unaffected: they run in fresh agent processes with the recipe's bench.threads.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


class RayExecutor:
    """Ray tasks train; the driver measures (see the module notes).

    ``address``: ``search.ray.address``, else ``$RAY_ADDRESS``, else a local instance
    (``ray.init()`` with no address) sized to this machine.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("ray", "executor: ray", 'pip install "ray"') from None
        self._ray = ray
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "ignore_reinit_error": True}
            if address is None:
                kwargs["num_cpus"] = num_cpus or _cores()
            ray.init(address=address, **kwargs)
            self._owns = True
        else:
            self._owns = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus)
        self._task = ray.remote(num_cpus=1, max_retries=0)(_train_only)
        self._running: dict[Any, TrialJob] = {}

    def submit(self, job: TrialJob) -> None:
        self._running[self._task.remote(replace(job, benchmark=False, run_dir=job.run_dir + ".train"))] = job

    def pending(self) -> int:
        return len(self._running)

    def next_done(self) -> tuple[TrialJob, dict[str, Any]]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1)
        ref = ready[0]
        job = self._running.pop(ref)
        try:
            trained = self._ray.get(ref)
        except Exception as e:  # the task or its worker died
            return job, {"number": job.number, "params": job.params, "run_dir": job.run_dir, "status": "failed",
                         "reason": f"the Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        if trained.get("status") == "failed":
            trained["run_dir"] = job.run_dir + ".train"  # the folder with the log of what failed
            return job, trained
        measured = run_trial_job(job)  # here, where the target is: steps from the cache, then timed
        measured["trained_on"] = trained.get("host")
        measured["train_steps"] = trained.get("steps")
        measured["train_duration_s"] = trained.get("duration_s")
        if measured.get("status") != "failed":
            remove_scratch(Path(job.run_dir + ".train"))
        return job, measured

    def close(self) -> None:
        for ref in list(self._running):
            self._ray.cancel(ref, force=True)
        self._running.clear()
        if self._owns:
            self._ray.shutdown()


def _train_only(job: TrialJob) -> dict[str, Any]:
    """A Ray task: the trial's steps, exports and evaluations, no benchmark."""
    import socket

    outcome = run_trial_job(job)
    outcome["host"] = socket.gethostname()
    return outcome


def make_executor(kind: str, workers: int | None, address: str | None) -> Executor:
    """The executor a search names."""
    if kind == "ray":
        return RayExecutor(address, workers)
    return LocalExecutor(workers)
