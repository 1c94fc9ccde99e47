"""Which machine a time was measured on: what changes a time, not what a machine is called.

Why: two runs on one host with another thread count, or on two hosts of different CPU models,
give times that differ by the machine, not by the code. The hostname says little (identical
cloud machines differ by it, one host can change its threads or torch); the fields below are
what a time depends on, as every record's environment (:func:`attnbench.env.capture`) keeps
them. Memory and FLOPs do not depend on them, so they compare across machines; times do not.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

#: environment fields a time depends on, with how a difference is named
TIMING_FIELDS: dict[str, str] = {"cpu": "CPU", "device_name": "device", "threads": "threads", "torch": "torch",
                                 "cuda": "CUDA"}


def timing_identity(env: Mapping[str, Any]) -> dict[str, str]:
    """The fields of ``env`` that change a time (those the record has; old records may lack some)."""
    return {name: str(env[name]) for name in TIMING_FIELDS if env.get(name) not in (None, "")}


def differences(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{field: (a's value, b's value)}`` for the fields both sides recorded and that differ."""
    return {name: (a[name], b[name]) for name in TIMING_FIELDS if name in a and name in b and a[name] != b[name]}


def describe_differences(pairs: Iterable[tuple[Mapping[str, str], Mapping[str, str]]],
                         sides: tuple[str, str] = ("baseline", "current")) -> str:
    """One phrase naming every differing field over matched pairs, e.g. ``threads 2 (baseline) vs 16
    (current), CPU 'Xeon' vs 'EPYC'`` (empty when the machines agree)."""
    seen: dict[str, tuple[set[str], set[str]]] = {}
    for a, b in pairs:
        for name, (x, y) in differences(a, b).items():
            left, right = seen.setdefault(name, (set(), set()))
            left.add(x)
            right.add(y)
    if "device_name" in seen and seen["device_name"] == seen.get("cpu"):  # CPU cells: the device is the CPU, said once
        seen.pop("device_name")
    parts = [f"{TIMING_FIELDS[name]} {' / '.join(sorted(left))} ({sides[0]}) vs {' / '.join(sorted(right))} ({sides[1]})"
             for name, (left, right) in seen.items()]
    return "; ".join(parts)
