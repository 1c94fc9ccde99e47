"""How loaded the machine was while a cell ran: the 1-minute load average and the CPU steal.

Why: a time measured while other processes fight for the cores (a load average of 15 on 2 cores)
is not the mechanism's time, and nothing else in a record tells a reader so. Every record carries
a ``load`` object::

    loadavg_1m_start, loadavg_1m_end   /proc/loadavg's 1-minute figure when the cell began and ended
    steal_pct                          share of CPU time the hypervisor stole (``steal`` of /proc/stat's
                                       ``cpu`` line) over the cell, start to end, all CPUs, in %; a
                                       rate needs two readings, so it is one figure for the cell
                                       (null when the cell was too short for a clock tick)
    cpus                               the CPUs the load average is shared by (os.cpu_count())

A record is *loaded* (:func:`is_loaded`) when either load average exceeds ``cpus``: more runnable
threads than cores, so the cell waited for CPU. The load average counts the whole machine's
runnable threads, so it is compared with the machine's CPUs, not the process's affinity mask
(on a large host a small mask would mark every run loaded). Where ``/proc`` is unreadable
(not Linux) the figures are null: unknown, never zero.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

PROC_LOADAVG = Path("/proc/loadavg")
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class LoadMark:
    """One reading: the 1-minute load average and the cumulative CPU ticks (total, steal)."""

    at: float
    loadavg_1m: Optional[float]
    ticks: Optional[tuple[int, int]]


def loadavg_1m() -> Optional[float]:
    try:
        return float(PROC_LOADAVG.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_ticks() -> Optional[tuple[int, int]]:
    """``(total, steal)`` clock ticks of all CPUs since boot (the ``cpu`` line of /proc/stat)."""
    try:
        with open(PROC_STAT, encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    values = [int(x) for x in fields[1:9]]
    return sum(values), values[7]


def mark() -> LoadMark:
    """A reading now."""
    return LoadMark(time.monotonic(), loadavg_1m(), cpu_ticks())


def load_record(start: LoadMark, end: Optional[LoadMark] = None) -> dict[str, Any]:
    """The record's ``load`` object between two readings (``end``: now)."""
    end = end or mark()
    steal = None
    if start.ticks and end.ticks and end.ticks[0] > start.ticks[0]:
        steal = round(100.0 * (end.ticks[1] - start.ticks[1]) / (end.ticks[0] - start.ticks[0]), 2)
    return {"loadavg_1m_start": start.loadavg_1m, "loadavg_1m_end": end.loadavg_1m, "steal_pct": steal,
            "cpus": os.cpu_count()}


def peak_load(load: Any) -> Optional[float]:
    """The larger of a record's two load averages (None when not recorded)."""
    if not isinstance(load, Mapping):
        return None
    values = [v for v in (load.get("loadavg_1m_start"), load.get("loadavg_1m_end"))
              if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(values) if values else None


def is_loaded(load: Any) -> Optional[bool]:
    """Whether a record was measured with more runnable threads than CPUs (None: load not recorded)."""
    peak = peak_load(load)
    cpus = load.get("cpus") if isinstance(load, Mapping) else None
    if peak is None or not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
        return None
    return peak > cpus
