"""The local executor: each cell in a fresh worker process on this machine (``--jobs`` at a time)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterable, Iterator, Optional

from ..cells import CellSpec
from ..errors import UserError
from ..proctree import Watcher
from ..load import mark as load_mark
from ..schema import now_iso, outside_record
from ..partial import PARTIAL_NAME, read_partial
from .launch import Launcher, is_timing_cell, make_launcher
from .outcome import classify, wait_watching


def _tail(text: str, lines: int = 3) -> str:
    kept = [l for l in text.strip().splitlines() if l.strip() and "USDT" not in l]
    return " | ".join(kept[-lines:])[-600:]


class LocalProcessExecutor:
    """Runs ``attnbench.worker`` per cell, in a fresh process, with a wall-clock timeout.

    The process is forked from a warm fork server or is a new interpreter (``launch.py``); either
    way it runs in its own process group (session); its stdout/stderr go to a log file. A crash
    records its last lines and the signal's name, a timeout or any exit kills the whole group and
    every descendant, also those that left it (:mod:`attnbench.proctree`: nothing the worker
    started survives it), and how a worker ended without a record is read by
    :mod:`attnbench.executors.outcome` (a SIGKILL is ``oom`` only with evidence). Records made
    here carry env, started_at and duration_s like the worker's, and the estimates the worker
    noted (beside its record, ``partial.json``) before it was stopped.
    """

    name = "local"

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None,
                 jobs: int = 1, start_method: str = "auto"):
        self.python = python
        self.env = {**os.environ, **(env or {})}
        self.jobs = jobs
        #: how worker processes start (fork server or plain subprocess), see launch.py
        self.launcher: Launcher = make_launcher(start_method, python, self.env)
        self._running: set[Any] = set()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._closed = False

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:  # noqa: SLF001 -- argparse's own type
        from .launch import add_arguments

        add_arguments(group)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LocalProcessExecutor":
        return cls(jobs=getattr(args, "jobs", None) or 1, start_method=getattr(args, "start_method", None) or "auto")

    def run_cells(self, specs: Iterable[CellSpec]) -> Iterator[dict[str, Any]]:
        self._closed = False
        if self.jobs == 1:
            try:
                for spec in specs:
                    yield self.run(spec)
            finally:
                self.close()
            return
        specs = list(specs)
        timing = sorted({s.suite for s in specs if is_timing_cell(s)})
        if timing:
            raise UserError(f"--jobs {self.jobs}: suite {', '.join(timing)} measures time, and cells running side by "
                            "side disturb each other's timings; use --jobs 1")
        self._pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="attnbench-cell")
        futures = [self._pool.submit(self.run, spec) for spec in specs]
        for future in as_completed(futures):
            yield future.result()
        self._pool.shutdown()

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for proc in list(self._running):
            if proc.poll() is None:
                _kill_group(proc)
        self._running.clear()
        self.launcher.close()

    def run(self, spec: CellSpec) -> dict[str, Any]:
        started, t0, load_start = now_iso(), time.perf_counter(), load_mark()
        with tempfile.TemporaryDirectory(prefix="attnbench-cell-") as tmp:
            spec_path, out_path, log_path = Path(tmp, "spec.json"), Path(tmp, "record.json"), Path(tmp, "log.txt")
            partial_path = Path(tmp, PARTIAL_NAME)  # the worker notes it beside its record
            spec_path.write_text(json.dumps(spec.to_dict(), default=str))
            proc = self.launcher.start(spec, spec_path, out_path, log_path, threads=self._threads())
            self._running.add(proc)
            if self._closed:  # close() ran while this cell was starting
                _kill_group(proc)
            watcher = Watcher(proc.pid, token=str(spec_path.resolve()))  # the mark (proctree.CELL_ENV)
            try:
                ended = wait_watching(proc, spec.timeout_s, on_poll=watcher.poll)
            finally:  # timeout, Ctrl-C, SIGTERM or normal exit: nothing of the cell survives
                _kill_group(proc, watcher)
                self._running.discard(proc)
            if ended.timed_out:
                return outside_record(spec, "timeout", f"no result within {spec.timeout_s:g} s (raise --timeout to allow more)",
                                      started_at=started, duration_s=time.perf_counter() - t0,
                                      metrics=read_partial(partial_path), load_start=load_start)
            if out_path.exists():
                try:
                    return json.loads(out_path.read_text())
                except json.JSONDecodeError:
                    pass
            status, reason = classify(ended, _tail(log_path.read_text(errors="replace")))
            return outside_record(spec, status, reason, started_at=started, duration_s=time.perf_counter() - t0,
                                  metrics=read_partial(partial_path), load_start=load_start)

    def _threads(self) -> Optional[int]:
        """Threads per worker: the interpreter's default alone, the cores shared out with ``--jobs N``
        (the cores this process may run on: taskset and cgroup limits count, not the machine's)."""
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return None if self.jobs == 1 else max(1, usable // self.jobs)


def _kill_group(proc: subprocess.Popen, watcher: Optional[Watcher] = None) -> None:
    """SIGKILL the worker's descendants (also those in sessions of their own, and those seen by
    ``watcher`` that outlived a dead worker), its whole process group, and reap the worker."""
    (watcher or Watcher(proc.pid)).kill_all(running=proc.poll() is None)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
