"""The local executor: each cell in a fresh worker process on this machine (``--jobs`` at a time)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
import argparse
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterable, Iterator, Optional

from ..cells import CellSpec
from ..schema import make_record
from ..errors import UserError
from .launch import Launcher, is_timing_cell, make_launcher


def _tail(text: str, lines: int = 3) -> str:
    kept = [l for l in text.strip().splitlines() if l.strip() and "USDT" not in l]
    return " | ".join(kept[-lines:])[-600:]


class LocalProcessExecutor:
    """Runs ``attnbench.worker`` per cell, in a fresh process, with a wall-clock timeout.

    The process is forked from a warm fork server or is a new interpreter (``launch.py``); either
    way it has its own session. The worker's stdout/stderr go to a log file; a crash records its
    last lines, a timeout kills the whole process group, and a SIGKILL with no record is read as
    the kernel's OOM killer.
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
            for spec in specs:
                yield self.run(spec)
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
        with tempfile.TemporaryDirectory(prefix="attnbench-cell-") as tmp:
            spec_path, out_path, log_path = Path(tmp, "spec.json"), Path(tmp, "record.json"), Path(tmp, "log.txt")
            spec_path.write_text(json.dumps(spec.to_dict(), default=str))
            proc = self.launcher.start(spec, spec_path, out_path, log_path, threads=self._threads())
            self._running.add(proc)
            if self._closed:  # close() ran while this cell was starting
                _kill_group(proc)
            try:
                code = proc.wait(timeout=spec.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return make_record(spec, "timeout", f"no result within {spec.timeout_s:g} s (raise --timeout to allow more)")
            finally:
                self._running.discard(proc)
            if out_path.exists():
                try:
                    return json.loads(out_path.read_text())
                except json.JSONDecodeError:
                    pass
            log_tail = _tail(log_path.read_text(errors="replace"))
            if code in (-signal.SIGKILL, 137):
                return make_record(spec, "oom", f"worker killed by SIGKILL (most likely the kernel OOM killer); {log_tail}")
            return make_record(spec, "error", f"worker exited with code {code}: {log_tail}")

    def _threads(self) -> Optional[int]:
        """Threads per worker: the interpreter's default alone, the cores shared out with ``--jobs N``."""
        return None if self.jobs == 1 else max(1, (os.cpu_count() or 1) // self.jobs)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
