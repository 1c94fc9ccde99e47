"""Harness overhead per cell of the local executor: fork server vs a fresh interpreter per cell.

Not a test (no assertion, not collected by pytest): a benchmark whose figures go in the README.
    .venv/bin/python tests/benchmarks/cell_overhead.py --cells 32 [--methods forkserver,subprocess]

Each trivial cell (memory suite, 16 px, linear/full, a different seed each) runs in its own fresh
process either way. Overhead per cell = (wall time of the whole run - the cells' own durations, as
their workers report them) / cells: process start, imports, plugin discovery, spec/record files.
The fork server's one-time start is included (amortised) and also shown on its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

from attnbench.executors.local import LocalProcessExecutor
from attnbench.suites import load


def trivial_cells(n: int) -> list:
    base = load("memory").cells("ci", mechanisms=["linear", "full"], sizes=[16])
    return [dataclasses.replace(base[i % len(base)], seed=i // len(base)) for i in range(n)]


def measure(method: str, cells: list) -> dict:
    executor = LocalProcessExecutor(start_method=method)
    t0 = time.perf_counter()
    first = None
    durations, gaps = [], []
    last = t0
    try:
        for record in executor.run_cells(cells):
            now = time.perf_counter()
            assert record["status"] == "ok", record["reason"]
            durations.append(record["duration_s"])
            gaps.append(now - last - record["duration_s"])
            first = first if first is not None else now - t0
            last = now
    finally:
        executor.close()
    wall = time.perf_counter() - t0
    return {"method": method, "cells": len(cells), "wall_s": wall, "cell_s": sum(durations),
            "overhead_per_cell_s": (wall - sum(durations)) / len(cells),
            "steady_overhead_median_s": statistics.median(gaps[1:]) if len(gaps) > 1 else gaps[0],
            "first_cell_overhead_s": gaps[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=32)
    parser.add_argument("--methods", default="forkserver,subprocess")
    args = parser.parse_args()
    cells = trivial_cells(args.cells)
    print(f"{'method':<11} {'cells':>5} {'wall s':>8} {'cells s':>8} {'overhead/cell s':>16} "
          f"{'steady median s':>16} {'first cell s':>13}")
    for method in args.methods.split(","):
        r = measure(method, cells)
        print(f"{r['method']:<11} {r['cells']:>5} {r['wall_s']:>8.1f} {r['cell_s']:>8.1f} "
              f"{r['overhead_per_cell_s']:>16.3f} {r['steady_overhead_median_s']:>16.3f} {r['first_cell_overhead_s']:>13.2f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
