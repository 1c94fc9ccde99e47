"""How a worker process ended, told apart honestly: timeout, crash, a kill, or the OOM killer.

Why a module: every executor that runs workers as processes (the local one, a fork server,
Slurm jobs) must read an exit the same way. A SIGKILL is recorded ``oom`` only with evidence
(the cgroup's ``oom_kill`` counter rose while the cell ran); with the worker's peak memory near
the machine's limit it is ``killed`` and says "possibly OOM"; otherwise plain ``killed``. Crashes
(SIGSEGV, SIGABRT...) are ``error``; every signal is named ("SIGSEGV", not "-11").
"""
from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..metrics import GIB

#: signals sent from outside (a user, a scheduler, the OOM killer): the cell was ``killed``
KILL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: a peak memory at or above this share of the limit is evidence for "possibly OOM"
NEAR_LIMIT = 0.9
CGROUP_EVENTS = Path("/sys/fs/cgroup/memory.events")
CGROUP_MAX = Path("/sys/fs/cgroup/memory.max")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def oom_kill_count() -> Optional[int]:
    """The cgroup v2 ``oom_kill`` counter of this process's cgroup (None where not readable)."""
    try:
        for line in CGROUP_EVENTS.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def memory_limit_bytes() -> int:
    """The memory a worker can use at most: the cgroup limit when set, else the machine's RAM."""
    from ..measure.memory import total_memory_bytes

    limit = total_memory_bytes("cpu")
    try:
        text = CGROUP_MAX.read_text().strip()
        if text.isdigit():
            limit = min(limit, int(text))
    except OSError:
        pass
    return limit


def peak_rss_bytes(pid: int) -> int:
    """High-water mark of a process's resident memory (VmHWM), 0 when gone or unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class Exit:
    """How a watched worker ended: its exit code (None: still running at the timeout) and evidence."""

    code: Optional[int]
    peak_rss_bytes: int = 0
    oom_kills_before: Optional[int] = None
    oom_kills_after: Optional[int] = None

    @property
    def timed_out(self) -> bool:
        return self.code is None


def wait_watching(proc: subprocess.Popen, timeout_s: float, poll_s: float = 0.2,
                  on_poll: Optional[Callable[[], None]] = None) -> Exit:
    """Wait for ``proc`` up to ``timeout_s``, sampling its peak memory (the evidence for an OOM);
    ``on_poll`` runs at each sample (the executor notes the worker's descendants)."""
    before = oom_kill_count()
    deadline = time.monotonic() + timeout_s
    peak = 0
    while True:
        peak = max(peak, peak_rss_bytes(proc.pid))
        if on_poll is not None:
            on_poll()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Exit(None, peak, before, oom_kill_count())
        try:
            code = proc.wait(timeout=min(poll_s, remaining))
            return Exit(code, peak, before, oom_kill_count())
        except subprocess.TimeoutExpired:
            continue


def classify(exit: Exit, log_tail: str = "", limit_bytes: Optional[int] = None) -> tuple[str, str]:
    """``(status, reason)`` of a worker that ended without writing its record."""
    code = exit.code
    assert code is not None, "a timeout is classified by the executor"
    tail = f"; {log_tail}" if log_tail else ""
    number = -code if code < 0 else (code - 128 if 128 < code < 128 + 65 else 0)  # 137: a shell's SIGKILL
    if not number:
        return "error", f"worker exited with code {code}{tail}"
    name = signal_name(number)
    if number not in KILL_SIGNALS:
        return "error", f"worker crashed: {name} (exit code {code}){tail}"
    if number == signal.SIGKILL:
        if exit.oom_kills_before is not None and exit.oom_kills_after is not None and exit.oom_kills_after > exit.oom_kills_before:
            return "oom", f"worker killed by {name}: the kernel's OOM killer (cgroup oom_kill count rose){tail}"
        limit = limit_bytes if limit_bytes is not None else memory_limit_bytes()
        if limit and exit.peak_rss_bytes >= NEAR_LIMIT * limit:
            return "killed", (f"worker killed by {name} (possibly OOM: its memory reached {exit.peak_rss_bytes / GIB:.2f} "
                              f"GiB of the {limit / GIB:.2f} GiB limit){tail}")
    return "killed", f"worker killed by {name} (exit code {code}){tail}"
