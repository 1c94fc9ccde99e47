"""The local executor: each cell in a fresh worker process on this machine, one at a time."""
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
from typing import Any, Iterable, Iterator

from ..cells import CellSpec
from ..schema import now_iso, outside_record
from ..worker import PARTIAL_ENV, read_partial
from .outcome import classify, wait_watching


def _tail(text: str, lines: int = 3) -> str:
    kept = [l for l in text.strip().splitlines() if l.strip() and "USDT" not in l]
    return " | ".join(kept[-lines:])[-600:]


class LocalProcessExecutor:
    """Runs ``python -m attnbench.worker`` per cell with a wall-clock timeout.

    The worker runs in its own process group (session); its stdout/stderr go to a log file. A
    crash records its last lines and the signal's name, a timeout or any exit kills the whole
    group (nothing the worker started survives it), and how a worker ended without a record is
    read by :mod:`attnbench.executors.outcome` (a SIGKILL is ``oom`` only with evidence).
    Records made here carry env, started_at and duration_s like the worker's, and the
    estimates the worker noted before it was stopped.
    """

    name = "local"

    def __init__(self, python: str = sys.executable, env: dict[str, str] | None = None):
        self.python = python
        self.env = {**os.environ, **(env or {})}
        self._running: subprocess.Popen | None = None

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:  # noqa: SLF001 -- argparse's own type
        pass

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LocalProcessExecutor":
        return cls()

    def run_cells(self, specs: Iterable[CellSpec]) -> Iterator[dict[str, Any]]:
        try:
            for spec in specs:
                yield self.run(spec)
        finally:
            self.close()

    def close(self) -> None:
        if self._running is not None:
            _kill_group(self._running)
        self._running = None

    def run(self, spec: CellSpec) -> dict[str, Any]:
        started, t0 = now_iso(), time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="attnbench-cell-") as tmp:
            spec_path, out_path, log_path = Path(tmp, "spec.json"), Path(tmp, "record.json"), Path(tmp, "log.txt")
            partial_path = Path(tmp, "partial.json")
            spec_path.write_text(json.dumps(spec.to_dict(), default=str))
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    [self.python, "-m", "attnbench.worker", str(spec_path), str(out_path)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**self.env, PARTIAL_ENV: str(partial_path)}, start_new_session=True,
                )
                self._running = proc
                try:
                    ended = wait_watching(proc, spec.timeout_s)
                finally:  # timeout, Ctrl-C, SIGTERM or normal exit: nothing of the cell survives
                    _kill_group(proc)
                    self._running = None
            if ended.timed_out:
                return outside_record(spec, "timeout", f"no result within {spec.timeout_s:g} s (raise --timeout to allow more)",
                                      started_at=started, duration_s=time.perf_counter() - t0,
                                      metrics=read_partial(partial_path))
            if out_path.exists():
                try:
                    return json.loads(out_path.read_text())
                except json.JSONDecodeError:
                    pass
            status, reason = classify(ended, _tail(log_path.read_text(errors="replace")))
            return outside_record(spec, status, reason, started_at=started, duration_s=time.perf_counter() - t0,
                                  metrics=read_partial(partial_path))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's whole process group (its children too) and reap the worker."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
