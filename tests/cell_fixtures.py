"""Cell runners that misbehave on purpose, for the worker-isolation tests.

The behaviour is chosen by the cell's size so one suite can hold good and bad cells side by side.
"""
from __future__ import annotations

import os
import time
from typing import Any

from attnbench.cells import CellSpec

OK, CRASH, OOM, HANG, RAISE, ALLOC = 1, 2, 3, 4, 5, 6
#: notes an estimate (as the measuring path does) then hangs; kills itself with SIGKILL
HANG_AFTER_ESTIMATE, SELF_KILL = 11, 12


def run(spec: CellSpec) -> dict[str, Any]:
    if spec.size == CRASH:
        os.abort()  # a native crash: SIGABRT, no Python exception
    if spec.size == OOM:
        import torch

        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the allocator refuses
    if spec.size == HANG:
        time.sleep(3600)
    if spec.size == HANG_AFTER_ESTIMATE:
        from attnbench.worker import report_partial

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
