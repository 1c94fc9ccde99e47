"""Cell runners that misbehave on purpose, for the worker-isolation tests.

The behaviour is chosen by the cell's size so one suite can hold good and bad cells side by side.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from attnbench.cells import CellSpec

OK, CRASH, OOM, HANG, RAISE, ALLOC = 1, 2, 3, 4, 5, 6
#: notes an estimate (as the measuring path does) then hangs; kills itself with SIGKILL
HANG_AFTER_ESTIMATE, SELF_KILL = 11, 12
#: start `sleep 300` in a session of its own (PID written to $ATTNBENCH_TEST_PID_DIR/SIZE.pid), then return
#: ok / hang / SIGKILL themselves; the last one's sleep is a grandchild orphaned by a double fork
SPAWN_OK, SPAWN_HANG, SPAWN_SELF_KILL, SPAWN_ORPHAN = 21, 22, 23, 24


def _spawn_sleep(size: int, orphan: bool = False) -> None:
    """A process outside the worker's group; ``orphan``: its parent exits at once (a daemon)."""
    import subprocess
    import sys

    pid_file = str(Path(os.environ["ATTNBENCH_TEST_PID_DIR"], f"{size}.pid"))
    if orphan:
        code = ("import os, subprocess, sys; p = subprocess.Popen(['sleep', '300'], start_new_session=True); "
                f"open({pid_file!r}, 'w').write(str(p.pid)); os._exit(0)")
        subprocess.run([sys.executable, "-c", code], check=True)
        return
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    Path(pid_file).write_text(str(proc.pid))


def run(spec: CellSpec) -> dict[str, Any]:
    if spec.size in (SPAWN_OK, SPAWN_HANG, SPAWN_SELF_KILL, SPAWN_ORPHAN):
        _spawn_sleep(spec.size, orphan=spec.size == SPAWN_ORPHAN)
        if spec.size == SPAWN_HANG:
            time.sleep(3600)
        if spec.size == SPAWN_SELF_KILL:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
    if spec.size == CRASH:
        os.abort()  # a native crash: SIGABRT, no Python exception
    if spec.size == OOM:
        import torch

        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the allocator refuses
    if spec.size == HANG:
        time.sleep(3600)
    if spec.size == HANG_AFTER_ESTIMATE:
        from attnbench.partial import report_partial

        report_partial({"estimated_memory_bytes": 12345, "estimated_flops": 678})
        time.sleep(3600)
    if spec.size == SELF_KILL:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9 <worker>` from outside would
    if spec.size == RAISE:
        raise ValueError("a bug in a runner")
    if spec.size == ALLOC:
        from attnbench.measure.memory import measure_peak
        import torch

        def work() -> None:
            a = torch.ones(10_000_000, dtype=torch.uint8)
            del a
            torch.ones(3_000_000, dtype=torch.uint8)

        _, peak = measure_peak(work)
        return {"peak_memory_bytes": peak}
    return {"value": spec.size * 10, "seed": spec.seed}
