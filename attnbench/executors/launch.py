"""How the local executor starts a cell's worker process: a fork server, or a fresh interpreter.

Both give each cell a fresh process in its own session (a timeout or kill takes its whole process
group); they differ only in start-up cost. The fork server (``forkserver.py``) forks a process
that already imported torch and the plugins (~0.1 s); a plain subprocess re-imports everything
(~3-4 s). ``--start-method auto`` uses the fork server where the platform can fork and falls back
to subprocesses, with one warning, if the server cannot start.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Protocol

from ..cells import CellSpec
from ..argtypes import int_option
from ..errors import UserError
from . import forkserver

START_METHODS = ("auto", "forkserver", "subprocess")


class Launcher(Protocol):
    def start(self, spec: CellSpec, spec_path: Path, out_path: Path, log_path: Path,
              threads: Optional[int] = None) -> Any:
        """Start ``attnbench.worker`` on one cell; returns a Popen-like handle (pid, poll, wait)."""

    def close(self) -> None: ...


class SubprocessLauncher:
    """``python -m attnbench.worker SPEC RECORD`` in a fresh interpreter (works everywhere)."""

    def __init__(self, python: str = sys.executable, env: Optional[dict[str, str]] = None,
                 die_with_parent: bool = False):
        self.python, self.env = python, env
        #: kill the worker if the process that started it dies (a Ray worker killed by force)
        self.die_with_parent = die_with_parent

    def start(self, spec: CellSpec, spec_path: Path, out_path: Path, log_path: Path,
              threads: Optional[int] = None) -> subprocess.Popen:
        env = self.env if threads is None else {**(self.env or os.environ), "OMP_NUM_THREADS": str(threads)}
        with open(log_path, "w") as log:
            return subprocess.Popen([self.python, "-m", "attnbench.worker", str(spec_path), str(out_path)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent if self.die_with_parent else None)

    def close(self) -> None:
        pass


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux prctl; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ForkServerLauncher:
    """Forks each worker from a warm fork server; falls back to a subprocess if the server fails."""

    def __init__(self, python: str = sys.executable, env: Optional[dict[str, str]] = None, strict: bool = False):
        self.python, self.env, self.strict = python, env, strict
        self.fallback = SubprocessLauncher(python, env)
        self._server: Optional[forkserver.ForkServer] = None
        self._broken = ""

    def start(self, spec: CellSpec, spec_path: Path, out_path: Path, log_path: Path,
              threads: Optional[int] = None) -> Any:
        if not self._broken:
            try:
                if self._server is None:
                    # the first cell's runner module is imported by the server too
                    self._server = forkserver.ForkServer(self.python, self.env, preload=(spec.runner.partition(":")[0],))
                return self._server.spawn(str(spec_path), str(out_path), str(log_path), threads)
            except forkserver.ForkServerError as exc:
                self._broken = str(exc)
                if self.strict:
                    raise UserError(f"--start-method forkserver: the fork server failed: {exc}") from None
                print(f"attnbench: fork server unavailable ({exc}); starting each cell in a fresh interpreter",
                      file=sys.stderr)
        return self.fallback.start(spec, spec_path, out_path, log_path, threads)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()


def make_launcher(method: str, python: str = sys.executable, env: Optional[dict[str, str]] = None) -> Launcher:
    if method not in START_METHODS:
        raise UserError(f"unknown --start-method {method!r}; valid: {', '.join(START_METHODS)}")
    if method == "subprocess" or (method == "auto" and not forkserver.available()):
        return SubprocessLauncher(python, env)
    if method == "forkserver" and not forkserver.available():
        raise UserError("--start-method forkserver needs a platform that can fork (Linux); use auto or subprocess")
    return ForkServerLauncher(python, env, strict=method == "forkserver")


def add_arguments(group: argparse._ArgumentGroup) -> None:  # noqa: SLF001 -- argparse's own type
    group.add_argument("--jobs", type=int_option("--jobs"), default=1,
                       help="cells run at once on this machine (default 1; a suite that records times, e.g. speed, "
                            "reconstruction or search, needs 1)")
    group.add_argument("--start-method", choices=START_METHODS, default="auto",
                       help="how each cell's fresh worker process starts: forked from a warm fork server "
                            "(fast; auto = where the platform can fork) or a new interpreter")


def is_timing_cell(spec: CellSpec) -> bool:
    """Whether the cell records a time (then cells running beside it would disturb the figure): its
    runner's options say so (``RunnerOptions.records_time``), for every suite alike."""
    from ..options import runner_options

    cls = runner_options(spec.runner)
    return cls is not None and cls.of(spec).records_time()


def check_jobs(jobs: int, specs: list[CellSpec]) -> None:
    """``--jobs N > 1`` with cells that record a time is a UserError (``attnbench run`` asks before
    any work; the local executor refuses again when handed such cells)."""
    timing = sorted({s.suite for s in specs if is_timing_cell(s)})
    if jobs > 1 and timing:
        raise UserError(f"--jobs {jobs}: suite {', '.join(timing)} measures time, and cells running side by "
                        "side disturb each other's timings; use --jobs 1")
