"""Whatever a cell starts ends with it: descendants of a worker, found and killed.

Why: killing a worker's process group misses what a plugin started in a session of its own
(``subprocess.Popen(..., start_new_session=True)``, a daemon, a double fork), which would then
outlive the cell and the run, holding memory and CPUs that the next cells' figures pay for.
Two halves (Linux; elsewhere both are no-ops):

* the worker makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``), so that an
  orphaned descendant is re-parented to it rather than to init, stays in its tree, and is killed
  by :func:`kill_descendants` when the cell ends (ok, error, or exception);
* the executor, which cannot trust a worker it is killing, walks the worker's tree itself
  (:func:`kill_tree`) before killing the worker, and :class:`Watcher` kills those whose worker
  died first (a crash, a SIGKILL from outside) and that were re-parented away from it: every
  descendant it saw while the cell ran, and every process carrying the cell's mark in its
  environment (:data:`CELL_ENV`, set by the worker, inherited by what it starts). The fork
  server, parent of forked workers, is a subreaper too and kills such orphans as they reach it.

Processes are found through ``/proc/PID/task/*/children``; each is stopped (SIGSTOP) as soon as it
is found, so that none can fork while its tree is walked, then all are killed together.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Iterable, Optional

PR_SET_CHILD_SUBREAPER = 36
#: set by a worker to its cell's spec path, inherited by what the cell starts: finds those that
#: escaped the worker's tree before the executor could see them (a worker killed at once)
CELL_ENV = "ATTNBENCH_CELL"


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list), empty when gone or unreadable."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(x) for x in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def start_time(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (tells a PID reused later apart); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int, stop: bool = False) -> list[int]:
    """Every descendant of ``pid``, parents before children; ``stop``: SIGSTOP each one found."""
    out: list[int] = []
    seen: set[int] = set()
    pending = children(pid)
    while pending:
        child = pending.pop()
        if child in seen:
            continue
        seen.add(child)
        if stop:
            _signal(child, signal.SIGSTOP)
        out.append(child)
        pending.extend(children(child))
    return out


def marked(token: str) -> list[int]:
    """Processes of this user whose environment has ``CELL_ENV=token`` (this process excluded)."""
    needle = f"{CELL_ENV}={token}".encode() + b"\0"
    found: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if needle in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        _signal(pid, signal.SIGKILL)


def kill_descendants() -> list[int]:
    """Kill every descendant of this process (a worker ending its cell) and reap them; returns their PIDs.

    Walked until no new one appears (a process being stopped may have forked just before). As a
    subreaper this process is the parent of every killed descendant once its own parent is gone,
    so waiting for all children leaves no zombie behind.
    """
    me = os.getpid()
    killed: list[int] = []
    for _ in range(10):
        found = [p for p in descendants(me, stop=True) if p not in killed]
        if not found:
            break
        _kill(found)
        killed.extend(found)
    if killed:
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except OSError:
                break
    return killed


def kill_tree(pid: int) -> list[int]:
    """Kill ``pid``'s descendants (stopped first, so none forks meanwhile); ``pid`` itself is left to
    the caller (who kills and reaps it). Returns the descendants killed."""
    _signal(pid, signal.SIGSTOP)
    killed: list[int] = []
    for _ in range(10):
        found = [p for p in descendants(pid, stop=True) if p not in killed]
        if not found:
            break
        killed.extend(found)
    _kill(killed)
    return killed


class Watcher:
    """Remembers a worker's descendants as the executor polls it, to kill any that outlive it;
    ``token``: the cell's :data:`CELL_ENV` value, to find those it never saw."""

    def __init__(self, pid: int, token: Optional[str] = None):
        self.pid, self.token = pid, token
        self.seen: dict[int, Optional[int]] = {}  # pid -> start time (a PID reused since is left alone)

    def poll(self) -> None:
        for child in descendants(self.pid):
            if child not in self.seen:
                self.seen[child] = start_time(child)

    def kill_all(self, running: bool = True) -> list[int]:
        """Kill the worker's tree (when it is still ``running``: once reaped, its PID may be another
        process's) and every descendant seen before that is still the same process."""
        killed = kill_tree(self.pid) if running else []
        for child, started in self.seen.items():
            if child not in killed and started is not None and start_time(child) == started:
                kill_tree(child)
                _signal(child, signal.SIGKILL)
                killed.append(child)
        for child in marked(self.token) if self.token else ():
            if child not in killed:
                kill_tree(child)
                _signal(child, signal.SIGKILL)
                killed.append(child)
        return killed
