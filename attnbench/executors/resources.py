"""What one cell asks of a cluster: CPUs, GPUs, memory, wall time (shared by the Ray and Slurm executors).

Cells declare no resources themselves; they follow from the spec: a ``cuda`` cell needs a GPU, a
timing cell needs the node (or a declared share) to itself so its figure is not disturbed by
neighbours, and memory comes from the mechanism's own analytic estimate plus the footprint of a
worker process (torch imported), when the mechanism can estimate the cell.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Optional

from ..cells import CellSpec
from ..errors import UserError
from ..argtypes import int_option
from .launch import is_timing_cell

#: resident memory of a worker process with torch and the plugins imported, before the cell allocates
WORKER_BASE_BYTES = 1 << 30


@dataclass(frozen=True)
class CellResources:
    cpus: int
    gpus: int
    memory_bytes: Optional[int]
    #: the cell must have its node (CPU cells) or its GPU to itself
    exclusive: bool


def add_arguments(group: argparse._ArgumentGroup) -> None:  # noqa: SLF001 -- argparse's own type
    """``--cpus-per-cell`` and ``--gpus-per-cell``, declared once whichever cluster executor comes first."""
    for flag, kwargs in (
        ("--cpus-per-cell", dict(type=int_option("--cpus-per-cell"), default=1,
                                 help="CPUs each cell gets on a cluster (default 1; timing cells: see --timing-cpus)")),
        ("--gpus-per-cell", dict(type=int_option("--gpus-per-cell", minimum=0), default=1,
                                 help="GPUs each cuda cell gets on a cluster (default 1; cpu cells get none)")),
        ("--timing-cpus", dict(type=int_option("--timing-cpus"), default=None,
                               help="CPUs a timing cell (speed suite) holds on a cluster; default: a whole node")),
    ):
        try:
            group.add_argument(flag, **kwargs)
        except argparse.ArgumentError:
            pass  # declared by the other cluster executor


def estimated_memory_bytes(spec: CellSpec) -> Optional[int]:
    """The mechanism's analytic peak memory for this cell, or None when it cannot say."""
    try:
        import torch

        from ..interface import ProblemShape, dtype_from_name
        from ..registry import mechanism

        module = mechanism(spec.mechanism, patch_size=spec.patch_size, default_seed=spec.seed, **spec.params)
        shape = ProblemShape.square(spec.size, spec.channels, spec.patch_size, spec.batch,
                                    dtype_bytes=torch.empty((), dtype=dtype_from_name(spec.dtype)).element_size(),
                                    mode=spec.mode)
        return int(module.estimate(shape).memory_bytes)
    except Exception:  # noqa: BLE001 -- an unknown mechanism or a task runner: no estimate
        return None


def cell_resources(spec: CellSpec, cpus_per_cell: int = 1, gpus_per_cell: int = 1,
                   timing_cpus: Optional[int] = None, node_cpus: Optional[int] = None) -> CellResources:
    """Resources for one cell; ``node_cpus`` is the size of a whole node (for timing cells)."""
    timing = is_timing_cell(spec)
    cpus = cpus_per_cell
    if timing:
        cpus = timing_cpus or node_cpus or cpus_per_cell
    gpus = gpus_per_cell if spec.device.startswith("cuda") else 0
    estimate = estimated_memory_bytes(spec)
    memory = None if estimate is None or spec.device.startswith("cuda") else WORKER_BASE_BYTES + estimate
    return CellResources(cpus=cpus, gpus=gpus, memory_bytes=memory, exclusive=timing and timing_cpus is None)


def parse_time_limit(text: str) -> int:
    """Slurm-style ``[D-]HH:MM:SS``, ``MM:SS`` or plain minutes -> minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise UserError(f"--time-limit {text!r}: use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS, e.g. 48:00:00")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = a * 3600 + (b or 0) * 60 + (c or 0)
    elif b is None:  # minutes
        seconds = a * 60
    elif c is None:  # MM:SS
        seconds = a * 60 + b
    else:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    seconds += (days or 0) * 86400
    if seconds <= 0:
        raise UserError(f"--time-limit {text!r} must be positive")
    return math.ceil(seconds / 60)
