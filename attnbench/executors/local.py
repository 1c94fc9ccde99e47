"""The local executor: each cell in a fresh worker process on this machine, one at a time."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
import argparse
from typing import Any, Iterable, Iterator

from ..cells import CellSpec
from ..schema import make_record


def _tail(text: str, lines: int = 3) -> str:
    kept = [l for l in text.strip().splitlines() if l.strip() and "USDT" not in l]
    return " | ".join(kept[-lines:])[-600:]


class LocalProcessExecutor:
    """Runs ``python -m attnbench.worker`` per cell with a wall-clock timeout.

    The worker's stdout/stderr go to a log file; a crash records its last lines, a timeout kills
    the whole process group, and a SIGKILL with no record is read as the kernel's OOM killer.
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
        for spec in specs:
            yield self.run(spec)

    def close(self) -> None:
        if self._running is not None and self._running.poll() is None:
            _kill_group(self._running)
        self._running = None

    def run(self, spec: CellSpec) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="attnbench-cell-") as tmp:
            spec_path, out_path, log_path = Path(tmp, "spec.json"), Path(tmp, "record.json"), Path(tmp, "log.txt")
            spec_path.write_text(json.dumps(spec.to_dict(), default=str))
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    [self.python, "-m", "attnbench.worker", str(spec_path), str(out_path)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self.env, start_new_session=True,
                )
                self._running = proc
                try:
                    code = proc.wait(timeout=spec.timeout_s)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    return make_record(spec, "timeout", f"no result within {spec.timeout_s:g} s (raise --timeout to allow more)")
            if out_path.exists():
                try:
                    return json.loads(out_path.read_text())
                except json.JSONDecodeError:
                    pass
            log_tail = _tail(log_path.read_text(errors="replace"))
            if code in (-signal.SIGKILL, 137):
                return make_record(spec, "oom", f"worker killed by SIGKILL (most likely the kernel OOM killer); {log_tail}")
            return make_record(spec, "error", f"worker exited with code {code}: {log_tail}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
